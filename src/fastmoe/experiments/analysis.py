"""Rates from stored job records: per-n summaries, log-log slopes with bootstrap intervals, a text table.

For every metric (the Voronoi losses and the per-parameter errors of each true atom) and every sample size
``n`` the summary gives the median with a bootstrap interval, the 10% trimmed mean, the mean, the standard
deviation and the 10%/90% quantiles over replications. The rate is the least-squares slope of
``log(statistic)`` on ``log(n)``, the statistic being the **median** by default (``STATISTICS``): the
errors are heavy-tailed (a few fits wander along flat directions of the likelihood, and D2's standard
deviation exceeds its mean at most sizes), a mean follows those few fits, and the theory's rates are
statements in probability, which a median tracks. The slope of the means is kept beside it
(``Report.mean_slopes``). Confidence intervals come from a bootstrap over replications (resample the
replications of every ``n`` with replacement, recompute the statistic and the slope). Differences of
slopes between experiments carry a bootstrap p-value, and a family of them is corrected by Holm's
step-down method (:func:`holm`).

Bad fits are not averaged silently: by default the rows with status ``ok`` and ``not_converged`` (the fit reached the
iteration cap, or its steps stalled, but the estimate is finite) enter the means, while ``diverged``, ``failed`` and ``crashed``
rows are left out; the summary counts every status per ``n`` so the table says what was left out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from .definition import Experiment
from .store import load_run

__all__ = ["Report", "SlopeFit", "SlopeDifference", "Comparison", "analyse", "compare_runs", "compare_slopes",
           "fit_slope", "holm", "pooled_slope", "summarize", "rate_metrics", "start_agreement", "wilson_interval",
           "DEFAULT_INCLUDE", "STATISTICS"]

#: Statuses whose rows enter the means by default.
DEFAULT_INCLUDE = ("ok", "not_converged")

#: How the replications at one ``n`` are summarised for a rate: the median (the default), the mean of the
#: central 80% (``TRIM`` cut from each end, as ``scipy.stats.trim_mean`` cuts), or the mean.
STATISTICS = ("median", "trimmed", "mean")
TRIM = 0.1

#: Per-parameter error fields fitted for a rate (see :data:`fastmoe.losses.PER_PARAMETER_FIELDS`).
PARAMETER_FIELDS = ("mass_err", "beta1_max", "a_max", "b_max", "beta1_mean", "a_mean", "b_mean", "bpool")

#: Fields defined for some true atoms only (NaN for the others): listed for an atom only where a record
#: has a value. ``bpool_j`` exists for vanishing true atoms (:func:`fastmoe.losses.per_parameter_errors`).
_SOMETIMES_DEFINED = ("bpool",)


def rate_metrics(experiment: Experiment, records: Sequence[dict], mean_fields: bool = True) -> List[str]:
    """Metrics with a rate: the experiment's losses, then per true atom the per-parameter errors."""
    present = set().union(*(r.keys() for r in records)) if records else set()
    fields = PARAMETER_FIELDS if mean_fields else tuple(f for f in PARAMETER_FIELDS if not f.endswith("_mean"))

    def defined(key):
        # Otherwise every report would carry a row of NaNs per true atom that does not vanish.
        return any(isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) for r in records)

    metrics = [m for m in experiment.losses]
    for j in range(experiment.truth.n_experts):
        metrics += [f"{f}_{j}" for f in fields if f"{f}_{j}" in present
                    and (f not in _SOMETIMES_DEFINED or defined(f"{f}_{j}"))]
    return metrics


def _values_by_n(records, metric, include) -> Dict[int, np.ndarray]:
    """Finite values of ``metric`` per ``n`` from the included rows."""
    by_n: Dict[int, list] = {}
    for r in records:
        if r["status"] not in include:
            continue
        value = r.get(metric)
        if value is None or not math.isfinite(value):
            continue
        by_n.setdefault(int(r["n"]), []).append(float(value))
    return {n: np.asarray(v) for n, v in sorted(by_n.items())}


def _check_statistic(statistic: str) -> None:
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")


def _statistic(values: np.ndarray, statistic: str) -> np.ndarray:
    """The ``statistic`` (one of ``STATISTICS``) of ``values`` along its last axis."""
    _check_statistic(statistic)
    if statistic == "median":
        return np.median(values, axis=-1)
    if statistic == "mean":
        return values.mean(axis=-1)
    m = values.shape[-1]
    cut = int(TRIM * m)
    return np.sort(values, axis=-1)[..., cut:m - cut].mean(axis=-1)


def _resampled(values: np.ndarray, n_boot: int, rng: np.random.Generator, statistic: str) -> np.ndarray:
    """The ``statistic`` of ``n_boot`` resamples of ``values`` drawn with replacement."""
    return _statistic(values[rng.integers(values.size, size=(n_boot, values.size))], statistic)


def summarize(records: Sequence[dict], metric: str, include: Iterable[str] = DEFAULT_INCLUDE, *,
              n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> List[dict]:
    """Per-``n`` statistics of ``metric`` over the included rows.

    Parameters
    ----------
    records, metric, include
        See :func:`fit_slope`.
    n_boot : int, default=1000
        Bootstrap resamples for the interval of the median (0: no interval).
    confidence : float, default=0.95
    seed : int, default=0

    Returns
    -------
    list of dict
        One per sample size (ascending): ``n, count, median, median_low, median_high, trimmed, mean, std,
        q10, q90`` and ``status_<s>`` counts over all rows of that ``n`` (included or not).
    """
    include = tuple(include)
    rng = np.random.default_rng(seed)
    statuses: Dict[int, Dict[str, int]] = {}
    for r in records:
        counts = statuses.setdefault(int(r["n"]), {})
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    values = _values_by_n(records, metric, include)
    out = []
    for n in sorted(statuses):
        v = values.get(n, np.empty(0))
        row = {"metric": metric, "n": n, "count": int(v.size)}
        if v.size:
            q10, median, q90 = np.quantile(v, [0.1, 0.5, 0.9])
            low, high = (_interval(_resampled(v, n_boot, rng, "median"), confidence)
                         if n_boot > 0 else (math.nan, math.nan))
            row.update(median=float(median), median_low=low, median_high=high,
                       trimmed=float(_statistic(v, "trimmed")), mean=float(v.mean()),
                       std=float(v.std(ddof=1)) if v.size > 1 else 0.0, q10=float(q10), q90=float(q90))
        else:
            row.update({key: math.nan for key in ("median", "median_low", "median_high", "trimmed", "mean", "std",
                                                  "q10", "q90")})
        row.update({f"status_{s}": c for s, c in sorted(statuses[n].items())})
        out.append(row)
    return out


@dataclasses.dataclass(frozen=True)
class SlopeFit:
    """Least-squares fit ``log(statistic of the metric) = intercept + slope * log(n)``."""

    metric: str
    slope: float
    intercept: float
    ci_low: float
    ci_high: float
    theory: float
    n_sizes: int  #: sample sizes that entered the fit
    n_rows: int  #: rows that entered the statistics
    confidence: float
    statistic: str = "median"  #: one of ``STATISTICS``

    def line(self, n) -> np.ndarray:
        """The fitted statistic of the metric at sample sizes ``n``."""
        return np.exp(self.intercept + self.slope * np.log(np.asarray(n, dtype=float)))


def _ols_slopes(log_n: np.ndarray, log_y: np.ndarray):
    """Slopes and intercepts of ``log_y[..., :]`` on ``log_n`` (vectorised over leading axes)."""
    x = log_n - log_n.mean()
    slope = (log_y - log_y.mean(axis=-1, keepdims=True)) @ x / (x @ x)
    intercept = log_y.mean(axis=-1) - slope * log_n.mean()
    return slope, intercept


def fit_slope(records: Sequence[dict], metric: str, *, include: Iterable[str] = DEFAULT_INCLUDE,
              theory: float = math.nan, n_boot: int = 2000, confidence: float = 0.95,
              min_n: Optional[int] = None, max_n: Optional[int] = None, seed: int = 0,
              statistic: str = "median") -> SlopeFit:
    """Slope of ``log(statistic of the metric)`` on ``log(n)`` with a bootstrap interval over replications.

    Parameters
    ----------
    records : sequence of dict
        Job records of one experiment.
    metric : str
        Record key, e.g. ``"D1"`` or ``"a_max_1"``.
    include : iterable of str
        Statuses whose rows enter the statistics.
    theory : float
        Theoretical slope, carried along for the report.
    n_boot : int, default=2000
        Bootstrap resamples (replications resampled with replacement within every ``n``).
    confidence : float, default=0.95
        Level of the percentile interval.
    min_n, max_n : int, optional
        Leave sample sizes below ``min_n`` or above ``max_n`` out of the fit.
    seed : int, default=0
        Seed of the bootstrap.
    statistic : {"median", "trimmed", "mean"}, default="median"
        What summarises the replications of one ``n`` (``STATISTICS``).

    Returns
    -------
    SlopeFit
        NaN slope when fewer than two sample sizes have a positive statistic; NaN interval when a size
        has a single replication.
    """
    values = _slope_values(records, metric, include, min_n, max_n, statistic)
    n_rows = int(sum(v.size for v in values.values()))
    if len(values) < 2:
        return SlopeFit(metric, math.nan, math.nan, math.nan, math.nan, theory, len(values), n_rows, confidence,
                        statistic)
    slope, intercept = _centre_slope(values, statistic)
    if min(v.size for v in values.values()) < 2:
        # One replication at a size: resampling it gives that row every time, so the interval would
        # show no spread at all (a study stopped after its first replication at some sizes).
        low, high = math.nan, math.nan
    else:
        low, high = _interval(_bootstrap_slopes(values, n_boot, np.random.default_rng(seed), statistic), confidence)
    return SlopeFit(metric, float(slope), float(intercept), low, high, float(theory),
                    len(values), n_rows, confidence, statistic)


def _centre_slope(values: Dict[int, np.ndarray], statistic: str):
    """Slope and intercept of ``log(statistic)`` on ``log(n)`` over the sizes of ``values``."""
    sizes = sorted(values)
    return _ols_slopes(np.log(np.array(sizes, dtype=float)), np.log([_statistic(values[n], statistic) for n in sizes]))


def _slope_values(records, metric, include, min_n=None, max_n=None, statistic="median") -> Dict[int, np.ndarray]:
    """The per-``n`` values a slope is fitted on: the sizes in ``[min_n, max_n]`` with a positive statistic."""
    _check_statistic(statistic)  # an error even without rows
    return {n: v for n, v in _values_by_n(records, metric, tuple(include)).items()
            if v.size and _statistic(v, statistic) > 0 and (min_n is None or n >= min_n)
            and (max_n is None or n <= max_n)}


def _bootstrap_slopes(values: Dict[int, np.ndarray], n_boot: int, rng: np.random.Generator,
                      statistic: str = "median") -> np.ndarray:
    """Slopes of ``n_boot`` resamples: the replications of every ``n`` drawn with replacement."""
    sizes = sorted(values)
    boot = np.empty((n_boot, len(sizes)))
    for col, n in enumerate(sizes):
        v = values[n]
        boot[:, col] = _resampled(v, n_boot, rng, statistic)
    with np.errstate(divide="ignore"):
        slopes, _ = _ols_slopes(np.log(np.array(sizes, dtype=float)), np.log(boot))
    return slopes  # -inf/nan only if a resampled statistic is 0; _interval drops them


def _interval(samples: np.ndarray, confidence: float):
    """Percentile interval of the finite ``samples`` (NaNs when there are none)."""
    samples = samples[np.isfinite(samples)]
    if not samples.size:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class SlopeDifference:
    """Slopes of one metric in two experiments fitted on their common sample sizes, and their difference."""

    metric: str
    slope_a: float
    slope_b: float
    difference: float  #: ``slope_b - slope_a``
    ci_low: float
    ci_high: float
    sizes: tuple  #: the common sample sizes the slopes were fitted on
    confidence: float
    #: Bootstrap p-value of "no difference" against ``alternative``: the share of resampled differences
    #: on the far side of 0 (twice the smaller share for a two-sided one), as (count + 1) / (resamples + 1)
    #: (Davison & Hinkley 1997, section 4.4).
    p_value: float = math.nan
    statistic: str = "median"
    alternative: str = "two-sided"  #: or "less" / "greater": the difference expected below / above 0

    @property
    def significant(self) -> bool:
        """Whether the interval of the difference excludes 0 (uncorrected: see :func:`holm` for a family)."""
        return bool(self.ci_low > 0 or self.ci_high < 0)


def compare_slopes(records_a: Sequence[dict], records_b: Sequence[dict], metric: str, *,
                   include: Iterable[str] = DEFAULT_INCLUDE, n_boot: int = 2000, confidence: float = 0.95,
                   min_n: Optional[int] = None, max_n: Optional[int] = None, seed: int = 0,
                   statistic: str = "median", alternative: str = "two-sided") -> SlopeDifference:
    """Difference of the rates of ``metric`` between two experiments, with a bootstrap interval.

    The question it answers is, e.g., "does the split-cell error fall faster with modified gating than with
    standard gating?". Both slopes are fitted on the sample sizes the two experiments share (a rate that is
    not a pure power law changes with the range of ``n``, so slopes over different grids are not comparable).
    The experiments are independent, so each is resampled on its own (replications within every ``n``, as in
    :func:`fit_slope`), the interval is the percentile interval of the resampled differences and the
    p-value their two-sided share beyond 0.

    Parameters
    ----------
    records_a, records_b : sequence of dict
        Job records of the two experiments.
    metric : str
        A record key both experiments carry.
    include, n_boot, confidence, min_n, max_n, seed, statistic
        See :func:`fit_slope`.
    alternative : {"two-sided", "less", "greater"}, default="two-sided"
        What the p-value tests against: a difference ``slope_b - slope_a`` of either sign, below 0 or
        above 0 (a planned, directional comparison).

    Returns
    -------
    SlopeDifference
        NaN slopes when fewer than two common sample sizes have a positive statistic in both.
    """
    if alternative not in ("two-sided", "less", "greater"):
        raise ValueError(f"alternative must be 'two-sided', 'less' or 'greater', got {alternative!r}")
    include = tuple(include)
    first = _slope_values(records_a, metric, include, min_n, max_n, statistic)
    second = _slope_values(records_b, metric, include, min_n, max_n, statistic)
    common = sorted(set(first) & set(second))
    if len(common) < 2:
        return SlopeDifference(metric, math.nan, math.nan, math.nan, math.nan, math.nan, tuple(common),
                               confidence, math.nan, statistic, alternative)
    first = {n: first[n] for n in common}
    second = {n: second[n] for n in common}
    slope_a, _ = _centre_slope(first, statistic)
    slope_b, _ = _centre_slope(second, statistic)
    rng = np.random.default_rng(seed)
    boot = _bootstrap_slopes(second, n_boot, rng, statistic) - _bootstrap_slopes(first, n_boot, rng, statistic)
    low, high = _interval(boot, confidence)
    boot = boot[np.isfinite(boot)]
    beyond = {"less": np.sum(boot >= 0), "greater": np.sum(boot <= 0),
              "two-sided": min(np.sum(boot <= 0), np.sum(boot >= 0))}[alternative]
    sides = 2.0 if alternative == "two-sided" else 1.0
    p_value = min(1.0, sides * (beyond + 1) / (boot.size + 1)) if boot.size else math.nan
    return SlopeDifference(metric, float(slope_a), float(slope_b), float(slope_b - slope_a), low, high,
                           tuple(common), confidence, float(p_value), statistic, alternative)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One row of :func:`compare_runs`: a metric's slope difference between run ``index`` and the baseline."""

    index: int  #: the run compared with run 0
    difference: SlopeDifference
    planned: bool  #: declared by one of the two definitions (read on its own, one-sided where directed)
    p_holm: float  #: Holm-adjusted p-value over the unplanned rows; NaN for a planned one

    @property
    def significant(self) -> bool:
        """Below 0.05: the planned p-value as it is, the others after Holm's adjustment."""
        p = self.difference.p_value if self.planned else self.p_holm
        return bool(p < 0.05)


def compare_runs(reports: Sequence["Report"], metrics: Sequence[str], *, names: Optional[Sequence[str]] = None,
                 include: Iterable[str] = DEFAULT_INCLUDE, n_boot: int = 2000, min_n: Optional[int] = None,
                 max_n: Optional[int] = None, statistic: str = "median") -> List[List[Comparison]]:
    """Every run's slopes against the first run's, planned comparisons apart, Holm's adjustment for the rest.

    Parameters
    ----------
    reports : sequence of Report
        The runs; ``reports[0]`` is the baseline.
    metrics : sequence of str
        Metrics every run carries.
    names : sequence of str, optional
        The names under which the runs are declared in each other's ``planned`` entries (a run stored
        under another name, e.g. a re-run with a suffix, keeps its preset's name here); default: the
        experiments' names.
    include, n_boot, min_n, max_n, statistic
        See :func:`compare_slopes`.

    Returns
    -------
    list of list of Comparison
        ``table[i][j]``: metric ``metrics[i]``, run ``j + 1`` against run 0. A comparison declared by
        either definition is tested on its own (one-sided where a direction was declared); the p-values
        of the others are adjusted by :func:`holm` over the whole table.
    """
    names = list(names) if names is not None else [r.experiment.name for r in reports]
    if len(names) != len(reports):
        raise ValueError(f"{len(names)} names for {len(reports)} runs")
    base = reports[0]
    flip = {"less": "greater", "greater": "less", "two-sided": "two-sided"}
    plans = []
    for other, name in zip(reports[1:], names[1:]):
        plan = dict(base.experiment.planned_against(name))  # alternatives about slope(other) - slope(base)
        for metric, alternative in other.experiment.planned_against(names[0]):
            plan.setdefault(metric, flip[alternative])
        plans.append(plan)
    include = tuple(include)
    diffs = [[compare_slopes(base.records, other.records, metric, include=include, n_boot=n_boot, min_n=min_n,
                             max_n=max_n, statistic=statistic, alternative=plan.get(metric, "two-sided"))
              for other, plan in zip(reports[1:], plans)] for metric in metrics]
    free = [d.p_value for row, metric in zip(diffs, metrics) for d, plan in zip(row, plans) if metric not in plan]
    adjusted = iter(holm(free))
    return [[Comparison(j + 1, d, metric in plan, math.nan if metric in plan else float(next(adjusted)))
             for j, (d, plan) in enumerate(zip(row, plans))] for row, metric in zip(diffs, metrics)]


def pooled_slope(records_by_truth: Sequence[Sequence[dict]], metric: str, *, include: Iterable[str] = DEFAULT_INCLUDE,
                 theory: float = math.nan, n_boot: int = 2000, confidence: float = 0.95,
                 min_n: Optional[int] = None, max_n: Optional[int] = None, seed: int = 0,
                 statistic: str = "median") -> SlopeFit:
    """The mean of one metric's slopes over several truths, with a bootstrap interval.

    Each truth's slope is :func:`fit_slope`'s; the pooled slope is their plain mean (every truth counts
    once, whatever its number of rows) and its interval the percentile interval of the mean of the
    truths' resampled slopes (each truth resampled on its own, its replications within every ``n``):
    an interval for the average rate over these truths, not over a population of truths. Truths with
    fewer than two usable sample sizes are left out (``n_sizes`` counts the truths pooled).
    """
    include = tuple(include)
    rng = np.random.default_rng(seed)
    slopes, boots, rows = [], [], 0
    for records in records_by_truth:
        values = _slope_values(records, metric, include, min_n, max_n, statistic)
        if len(values) < 2:
            continue
        slopes.append(float(_centre_slope(values, statistic)[0]))
        boots.append(_bootstrap_slopes(values, n_boot, rng, statistic))
        rows += int(sum(v.size for v in values.values()))
    if not slopes:
        return SlopeFit(metric, math.nan, math.nan, math.nan, math.nan, theory, 0, rows, confidence, statistic)
    low, high = _interval(np.mean(boots, axis=0), confidence)
    return SlopeFit(metric, float(np.mean(slopes)), math.nan, low, high, float(theory), len(slopes), rows,
                    confidence, statistic)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (Holm 1979); NaNs stay NaN and do not count.

    The k-th smallest of m p-values is multiplied by m - k + 1, and the adjusted values are made
    non-decreasing in that order; rejecting where the adjusted value is below alpha controls the
    family-wise error rate at alpha under any dependence between the tests.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def wilson_interval(successes: int, trials: int, confidence: float = 0.95):
    """Wilson score interval of a binomial proportion (NaNs without trials)."""
    if trials <= 0:
        return math.nan, math.nan
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2.0))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def _median(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(values)) if values else math.nan


def start_agreement(records: Sequence[dict], include: Iterable[str] = DEFAULT_INCLUDE,
                    confidence: float = 0.95) -> List[dict]:
    """How settled the data-driven fits are, per ``n`` and over all sizes (the last row, ``n = "all"``).

    For the jobs of a data-driven fit (records with ``n_starts``, see :mod:`~fastmoe.experiments.job`):
    ``fits``, the medians of ``n_starts`` and ``n_best`` and ``single_best``, the fits whose maximum was
    reached by one start only (fastmoe's ``SearchWarning``). For the jobs with an oracle check
    (``fit.oracle_check``), compared when both fits have a status in ``include`` (the rest are counted in
    ``not_compared``): ``reached`` (the data-driven fit reached the oracle-started maximum or a higher
    one), ``same`` (the same maximum, relative 1e-6), ``higher``, the share reached with its Wilson
    interval, the median and largest ``oracle_gap`` (nats the data-driven fit ended below the
    oracle-started one) and the median ratio of the two fits' times.

    Returns
    -------
    list of dict
        Empty when no record comes from a data-driven fit.
    """
    include = tuple(include)
    records = [r for r in records if "n_starts" in r or "oracle_gap" in r]
    if not records:
        return []
    sizes = sorted({int(r["n"]) for r in records})
    out = []
    for n in sizes + ["all"]:
        rows = records if n == "all" else [r for r in records if int(r["n"]) == n]
        started = [r for r in rows if "n_starts" in r]
        checked = [r for r in rows if "oracle_gap" in r]
        compared = [r for r in checked if r["status"] in include and r["oracle_status"] in include]
        reached = sum(bool(r["reached_oracle"]) for r in compared)
        same = sum(bool(r["same_maximum"]) for r in compared)
        low, high = wilson_interval(reached, len(compared), confidence)
        gaps = [r["oracle_gap"] for r in compared]
        out.append({
            "n": n,
            "fits": len(started),
            "median_starts": _median([r["n_starts"] for r in started]),
            "median_best": _median([r["n_best"] for r in started]),
            "single_best": sum(r["n_best"] == 1 and r["n_starts"] > 1 for r in started),
            "checked": len(checked),
            "compared": len(compared),
            "not_compared": len(checked) - len(compared),
            "reached": reached,
            "same": same,
            "higher": reached - same,
            "share_reached": reached / len(compared) if compared else math.nan,
            "share_low": low,
            "share_high": high,
            "median_gap": _median(gaps),
            "max_gap": max(gaps) if gaps else math.nan,
            "median_time_ratio": _median([r["fit_time"] / r["oracle_fit_time"] for r in compared
                                          if r["oracle_fit_time"] > 0]),
        })
    return out


@dataclasses.dataclass
class Report:
    """Analysis of one experiment in a store (see :func:`analyse`)."""

    experiment: Experiment
    records: List[dict]
    include: tuple
    metrics: List[str]
    slopes: Dict[str, SlopeFit]  #: by the report's statistic (the median by default)
    summaries: Dict[str, List[dict]]
    status_counts: Dict[str, int]
    #: :func:`start_agreement` of the records (empty for a study started near the truth).
    agreement: List[dict] = dataclasses.field(default_factory=list)
    #: Slopes of the means, the secondary column (empty when the report's statistic is the mean).
    mean_slopes: Dict[str, SlopeFit] = dataclasses.field(default_factory=dict)

    @property
    def statistic(self) -> str:
        """What summarises the replications of one ``n`` in :attr:`slopes`."""
        return next(iter(self.slopes.values())).statistic if self.slopes else "median"

    @property
    def primary(self) -> SlopeFit:
        """The slope of the experiment's primary loss."""
        return self.slopes[self.experiment.primary_loss]

    def status_by_n(self) -> Dict[int, Dict[str, int]]:
        """``{n: {status: count}}`` over all rows."""
        out: Dict[int, Dict[str, int]] = {}
        for r in self.records:
            counts = out.setdefault(int(r["n"]), {})
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return dict(sorted(out.items()))

    def format_table(self, all_metrics: bool = False) -> str:
        """The terminal report: per-``n`` table of the losses and the slope table."""
        exp = self.experiment
        grid = set(exp.jobs())
        in_grid = sum((int(r["n"]), int(r["replication"])) in grid for r in self.records)
        stored = f"{in_grid}/{exp.n_jobs} jobs stored"
        if len(self.records) > in_grid:  # the latest run had a smaller grid than an earlier one
            stored += f" (and {len(self.records) - in_grid} of an earlier, larger grid, analysed too)"
        stat = self.statistic
        lines = [f"experiment {exp.name}: {exp.outline()}; {stored}; statistics over statuses {list(self.include)}"]
        losses = list(exp.losses)
        boxed = exp.fit.bounds is not None
        head = f"{'n':>9} {'rows':>5} {'ok':>4} {'cap':>4} {'div':>4} {'fail':>4}"
        head += f" {'bnd':>4}" * boxed + f" {'iters':>7} {'time/s':>7}"
        head += "".join(f" {'median ' + m:>13} {'95% CI':>19} {'mean':>9}" for m in losses)
        lines += ["", head]
        by_n = self.status_by_n()
        for i, (n, counts) in enumerate(by_n.items()):
            rows = [r for r in self.records if int(r["n"]) == n and r["status"] in self.include]
            iters = np.median([r["n_iter"] for r in rows]) if rows else math.nan
            fit_time = np.median([r["fit_time"] for r in rows]) if rows else math.nan
            line = (f"{n:>9} {sum(counts.values()):>5} {counts.get('ok', 0):>4} "
                    f"{counts.get('not_converged', 0):>4} {counts.get('diverged', 0):>4} "
                    f"{counts.get('failed', 0) + counts.get('crashed', 0):>4}")
            if boxed:  # fits that ended on the box, among all rows of this n (kept in the means)
                line += f" {sum(bool(r.get('bound_active')) for r in self.records if int(r['n']) == n):>4}"
            line += f" {iters:>7.0f} {fit_time:>7.3f}"
            for m in losses:
                s = next(row for row in self.summaries[m] if row["n"] == n)
                line += f" {s['median']:>13.4g} [{s['median_low']:>8.3g}, {s['median_high']:>8.3g}] {s['mean']:>9.3g}"
            lines.append(line)
        lines += ["", "ok: converged; cap: max_iter reached or steps stalled (kept); div: diverged coefficients (left out); "
                      "fail: fit raised or worker died (left out)"
                      + ("; bnd: some parameter ended on the box of fit.bounds (kept)" if boxed else "")
                      + "; iters, time/s: medians; 95% CI: bootstrap interval of the median", ""]
        pct = int(round(100 * next(iter(self.slopes.values())).confidence)) if self.slopes else 95
        secondary = bool(self.mean_slopes)
        lines.append(f"slopes of log({stat}) on log(n)" + ("; 'of means': the slope of log(mean), for comparison"
                                                            if secondary else ""))
        lines.append(f"{'metric':<14} {'slope':>8} {f'{pct}% CI':>19} {'theory':>7} {'sizes':>6} {'rows':>6}"
                     + f" {'of means':>9} {f'{pct}% CI':>19}" * secondary)
        for m in self.metrics:
            if not all_metrics and m.startswith(("beta1_mean", "a_mean", "b_mean")):
                continue
            s = self.slopes[m]
            theory = "" if math.isnan(s.theory) else f"{s.theory:+.3f}"
            line = (f"{m:<14} {s.slope:>+8.3f} [{s.ci_low:>+7.3f}, {s.ci_high:>+7.3f}] {theory:>7} "
                    f"{s.n_sizes:>6} {s.n_rows:>6}")
            if secondary:
                t = self.mean_slopes[m]
                line += f" {t.slope:>+9.3f} [{t.ci_low:>+7.3f}, {t.ci_high:>+7.3f}]"
            lines.append(line)
        if self.agreement:
            lines += ["", self.format_agreement()]
        return "\n".join(lines)

    def format_agreement(self) -> str:
        """The table of :func:`start_agreement`: starts of the data-driven fits and the oracle check."""
        checked = any(row["checked"] for row in self.agreement)
        lines = [f"data-driven fits (fit.init = {self.experiment.fit.init!r}): starts, and how many reached "
                 "the maximum of the fit started near the truth" if checked else
                 f"data-driven fits (fit.init = {self.experiment.fit.init!r}): starts"]
        head = f"{'n':>9} {'fits':>5} {'starts':>6} {'best':>5} {'1best':>5}"
        if checked:
            head += (f" {'compared':>8} {'reached':>7} {'same':>5} {'higher':>6} {'share [95% Wilson]':>22}"
                     f" {'median gap':>11} {'max gap':>10} {'time x':>7}")
        lines.append(head)
        for row in self.agreement:
            line = (f"{row['n']:>9} {row['fits']:>5} {row['median_starts']:>6.0f} {row['median_best']:>5.0f} "
                    f"{row['single_best']:>5}")
            if checked:
                share = (f"{row['share_reached']:.3f} [{row['share_low']:.2f}, {row['share_high']:.2f}]"
                         if row["compared"] else "")
                line += (f" {row['compared']:>8} {row['reached']:>7} {row['same']:>5} {row['higher']:>6} "
                         f"{share:>22} {row['median_gap']:>11.3g} {row['max_gap']:>10.3g} "
                         f"{row['median_time_ratio']:>7.1f}")
            lines.append(line)
        note = ("starts/best: medians of FitResult.starts' starts and of those that reached the kept maximum; "
                "1best: fits whose maximum one start alone reached")
        if checked:
            note += ("; reached: the data-driven fit ended at the oracle-started maximum (same, relative 1e-6) "
                     "or higher; gap: oracle objective - data-driven objective, nats; time x: median ratio of "
                     "the fit times (data-driven / oracle)")
        lines.append(note)
        return "\n".join(lines)

    def slope_rows(self) -> List[dict]:
        """Slopes as plain rows (for CSV/JSON): the report's statistic's, then the means' (column ``statistic``)."""
        return [dataclasses.asdict(table[m]) for table in (self.slopes, self.mean_slopes) if table
                for m in self.metrics]

    def summary_rows(self) -> List[dict]:
        """Per-``n`` statistics of every metric as plain rows."""
        return [row for m in self.metrics for row in self.summaries[m]]


def analyse(source, experiment: Optional[str] = None, *, include: Iterable[str] = DEFAULT_INCLUDE,
            n_boot: int = 2000, confidence: float = 0.95, min_n: Optional[int] = None,
            max_n: Optional[int] = None, seed: int = 0, statistic: str = "median") -> Report:
    """Analyse the records of one experiment.

    Parameters
    ----------
    source : str, Path or ResultStore
        A run directory, a store file, an open store, or an archived run (``results.csv`` beside
        ``experiment.toml``; :func:`~fastmoe.experiments.store.load_run`).
    experiment : str, optional
        Experiment name; may be left out when the store holds one experiment.
    include, n_boot, confidence, min_n, max_n, seed, statistic
        See :func:`fit_slope`; the slopes of the means are computed too when ``statistic`` is another.

    Returns
    -------
    Report
    """
    include = tuple(include)
    exp, records, counts = load_run(source, experiment)
    metrics = rate_metrics(exp, records)

    def slopes_of(stat):
        return {m: fit_slope(records, m, include=include, theory=exp.theory_slope(m), n_boot=n_boot,
                             confidence=confidence, min_n=min_n, max_n=max_n, seed=seed, statistic=stat)
                for m in metrics}

    slopes = slopes_of(statistic)
    summaries = {m: summarize(records, m, include, n_boot=min(n_boot, 1000), confidence=confidence, seed=seed)
                 for m in metrics}
    return Report(exp, records, include, metrics, slopes, summaries, counts,
                  start_agreement(records, include, confidence), {} if statistic == "mean" else slopes_of("mean"))
