"""``summary()``: a fitted mixture read like a statsmodels summary, as text and as pandas DataFrames.

One report for a :class:`~fastmoe.FitResult` and for a fitted
:class:`~fastmoe.MixtureOfExpertsClassifier` (their ``summary`` methods call :func:`summarize`):

- a header: the shapes, ``n``, the log-likelihood, the penalty, AIC/BIC, how the fit stopped and how
  the standard errors were formed. Each line is one entry of :data:`HEADER`, a label and a function of
  the fit: a new line is one more entry;
- the experts: each one's gate share, the mean gating probability ``mean_n pi_i(x_n)`` over the data;
- the coefficients, named by feature and class, each block saying what it is relative to: the gating of
  expert ``i`` is the log-odds of expert ``i`` against the last (reference) expert, the coefficients of
  class ``s`` in an expert the log-odds of class ``s`` against the last (reference) class;
- with the data, standard errors, ``z``, p-values and Wald intervals from
  :func:`fastmoe.parameter_table` (observed information for an unpenalised fit, the inverse penalised
  Hessian for a penalised one; the header says which).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from ._fit import FitResult
from ._predict import gate_proba
from ._validation import check_sample_weight, check_X
from .uncertainty import parameter_table

__all__ = ["HEADER", "Summary", "summarize"]

_STATS = ("std_error", "z", "p_value", "lower", "upper")


def _yes(flag):
    return "yes" if flag else "no"


def _penalty(fit):
    if fit.result.l2 == 0:
        return "none (maximum likelihood)"
    return f"ridge l2={fit.result.l2:g} on all slopes ({fit.result.ridge}); objective {fit.result.objective:.4f}"


#: The header, line by line: ``(label, function of the _Fit giving the text, or None to leave it out)``.
HEADER = [
    ("model", lambda f: f"mixture of {f.result.params.n_experts} multinomial-logistic experts, "
                        f"softmax gating on {f.gate_input_name}"),
    ("experts, classes, features", lambda f: f"k = {f.result.params.n_experts}, K = {f.result.params.n_classes}, "
                                             f"d = {f.result.params.n_features}"),
    ("inputs", lambda f: f.inputs_line),
    ("samples", lambda f: f"n = {f.result.n_samples}" + (
        "" if f.result.n_observations in (None, f.result.n_samples)
        else f" rows, {f.result.n_observations:g} observations (the weights' sum, BIC's n)")),
    ("log-likelihood", lambda f: f"{f.result.loglik:.4f}"),
    ("penalty", _penalty),
    ("box", lambda f: None if f.result.bounds is None else
            ", ".join(f"|{group}| <= {limit:g}" for group, limit in f.result.bounds.to_dict().items())
            + f"; {len(f.result.active_bounds)} free parameters on it"),
    ("AIC, BIC", lambda f: f"{f.result.aic:.2f}, {f.result.bic:.2f} ({f.result.n_free_params} free parameters)"),
    ("stopped", lambda f: f.result.message),
    ("converged, diverged", lambda f: f"{_yes(f.result.converged)}, {_yes(f.result.diverged)}"),
    ("iterations", lambda f: f"{f.result.n_iter} ({f.result.n_newton} Newton steps), {f.result.time:.2f} s"),
    ("empty experts", lambda f: ", ".join(map(str, f.result.empty_experts)) if f.result.empty_experts else None),
    ("standard errors", lambda f: f"{f.table.method}; {'' if f.table.replicates is not None else 'Wald '}"
                                  f"{f.table.level:.0%} intervals" if f.table is not None
                                  else "not computed (pass the training X and y)"),
]


@dataclass
class _Fit:
    """What the header lines read: the fit, its table (or None) and names."""

    result: FitResult
    table: object
    gate_input_name: str
    inputs_line: object = None  # which columns the gating and the experts read, when they differ


def _number(value):
    if not np.isfinite(value):
        return "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.3e}"


def _gate_feature_names(params, feature_names):
    """Names of the gating inputs ``M(x)``: the features for identity gating, ``tanh(x1)`` and the like."""
    name = params.gating_name
    if name == "identity":
        return list(feature_names)
    if isinstance(params.gating, str):  # a built-in elementwise transform
        return [f"{name}({feature})" for feature in feature_names]
    return [f"{name}(x)[{j}]" for j in range(params.n_gate_features)]


@dataclass(frozen=True, repr=False)
class Summary:
    """A fitted mixture's report. ``str(summary)`` (or ``print``) gives the text; :meth:`to_frame` the
    coefficients, :meth:`experts_frame` the experts and :meth:`header_frame` the header as pandas objects.

    Attributes
    ----------
    header : tuple of (str, str)
        Label and text of each header line.
    experts : tuple of str
        Expert labels; the last is the gating reference.
    gate_share : ndarray of shape (n_experts,) or None
        Mean gating probability of each expert over the data (None without ``X``).
    classes : tuple
        Class labels; the last is each expert's reference class.
    rows : tuple of dict
        One per free parameter, in :func:`fastmoe.free_parameter_names` order: ``part`` ("gating" or
        "expert"), ``expert``, ``class`` (None for gating), ``term`` ("intercept" or a feature),
        ``name`` (the free-parameter name), ``estimate`` and, with data, ``std_error, z, p_value, lower,
        upper``.
    level : float
    """

    header: tuple
    experts: tuple
    gate_share: object
    classes: tuple
    rows: tuple
    level: float

    @property
    def has_standard_errors(self) -> bool:
        return bool(self.rows) and "std_error" in self.rows[0]

    # -- pandas ---------------------------------------------------------------------------------------
    def to_frame(self):
        """The coefficients: a DataFrame indexed by ``(part, expert, class, term)`` (needs pandas)."""
        import pandas as pd

        columns = ["name", "estimate", *(_STATS if self.has_standard_errors else ())]
        index = pd.MultiIndex.from_tuples(
            [(r["part"], r["expert"], "" if r["class"] is None else r["class"], r["term"]) for r in self.rows],
            names=["part", "expert", "class", "term"],
        )
        return pd.DataFrame([[r[c] for c in columns] for r in self.rows], index=index, columns=columns)

    def experts_frame(self):
        """Each expert's gate share and whether it is the gating reference (needs pandas)."""
        import pandas as pd

        share = self.gate_share if self.gate_share is not None else np.full(len(self.experts), np.nan)
        reference = [i == len(self.experts) - 1 for i in range(len(self.experts))]
        return pd.DataFrame({"gate_share": share, "reference": reference}, index=pd.Index(self.experts, name="expert"))

    def header_frame(self):
        """The header as a Series of text, indexed by label (needs pandas)."""
        import pandas as pd

        return pd.Series(dict(self.header), name="value")

    # -- text -----------------------------------------------------------------------------------------
    def _table_lines(self, rows):
        lo, hi = f"[{(1 - self.level) / 2:.1%}", f"{(1 + self.level) / 2:.1%}]"
        header = ["", "coef"] + (["std err", "z", "P>|z|", lo, hi] if self.has_standard_errors else [])
        lines = []
        for r in rows:
            cells = [str(r["term"]), _number(r["estimate"])]
            if self.has_standard_errors:
                cells += [_number(r["std_error"]), f"{r['z']:.2f}", f"{r['p_value']:.3f}",
                          _number(r["lower"]), _number(r["upper"])]
            lines.append(cells)
        widths = [max(len(h), *(len(line[c]) for line in lines)) for c, h in enumerate(header)]
        fmt = lambda cells: "  ".join(  # noqa: E731
            cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(cells, widths))
        ).rstrip()
        return [fmt(header)] + [fmt(line) for line in lines]

    def __str__(self):
        width = max(len(label) for label, _ in self.header)
        head = [f"{label.ljust(width)}  {text}" for label, text in self.header]
        rule = "=" * max(78, max(len(line) for line in head))
        out = ["Mixture of experts", rule, *head, rule]
        reference_expert, reference_class = self.experts[-1], self.classes[-1]
        out.append(f"Experts (gating reference: expert {reference_expert})")
        for i, label in enumerate(self.experts):
            share = "" if self.gate_share is None else f"gate share {self.gate_share[i]:.3f}"
            note = "  (reference)" if i == len(self.experts) - 1 else ""
            out.append(f"  expert {label}  {share}{note}".rstrip())
        for expert in self.experts[:-1]:
            rows = [r for r in self.rows if r["part"] == "gating" and r["expert"] == expert]
            out += ["", f"Gating, expert {expert}: log-odds of expert {expert} against expert {reference_expert}"]
            out += ["  " + line for line in self._table_lines(rows)]
        for expert in self.experts:
            for label in self.classes[:-1]:
                rows = [r for r in self.rows if r["part"] == "expert" and r["expert"] == expert and r["class"] == label]
                out += ["", f"Expert {expert}, class {label!r}: log-odds of class {label!r} against class "
                            f"{reference_class!r}"]
                out += ["  " + line for line in self._table_lines(rows)]
        return "\n".join(out)

    def __repr__(self):
        return str(self)


def _resolve(model, feature_names, class_names):
    """``(result, features, classes)`` of a FitResult or fitted estimator."""
    if isinstance(model, FitResult):
        params = model.params
        names = feature_names if feature_names is not None else model.feature_names
        features = list(names) if names is not None else [f"x{j}" for j in range(params.n_inputs)]
        classes = list(class_names) if class_names is not None else list(range(params.n_classes))
        return model, features, classes
    estimator = sys.modules.get("fastmoe.estimator")  # loaded whenever an estimator exists
    if estimator is not None and isinstance(model, estimator.MixtureOfExpertsClassifier):
        result = model.fit_result_
        names = getattr(model, "feature_names_in_", None)
        features = [f"x{j}" for j in range(result.params.n_inputs)] if names is None else [str(n) for n in names]
        if feature_names is not None:
            features = list(feature_names)
        classes = list(model.classes_.tolist()) if class_names is None else list(class_names)
        return result, features, classes
    raise TypeError(f"expected a FitResult or a fitted MixtureOfExpertsClassifier, got {type(model).__name__}")


def summarize(
    model, X=None, y=None, *, sample_weight=None, level=0.95, covariance="auto",
    feature_names=None, class_names=None, n_threads=None, n_boot=None, random_state=None,
) -> Summary:
    """The summary of a fit; what ``FitResult.summary`` and ``MixtureOfExpertsClassifier.summary`` return.

    Parameters
    ----------
    model : FitResult or fitted MixtureOfExpertsClassifier
    X : array-like of shape (n_samples, n_features), optional
        The training inputs: with them the summary gives the experts' gate shares.
    y : array-like of shape (n_samples,), optional
        The training labels (the estimator's own labels for an estimator): with ``X``, standard errors.
    sample_weight : array-like of shape (n_samples,), optional
        The fit's weights.
    level : float, default=0.95
        Coverage of the intervals.
    covariance : {"auto", "observed", "penalised", "sandwich"}, default="auto"
        See :func:`fastmoe.parameter_table`.
    n_boot : int, optional
        With it, standard errors and intervals from ``n_boot`` parametric-bootstrap refits
        (:func:`fastmoe.bootstrap_table`, its default normal interval) instead of the Wald ones: at
        moderate ``n`` the Wald intervals cover less than they say (0.90 for 95% at n = 5000 on the
        README's truth, the bootstrap's 0.96; docs/uncertainty.md).
    random_state : None, int or numpy.random.Generator
        Seeds the bootstrap's refits.
    feature_names, class_names : sequence, optional
        Names to use; by default an estimator's ``feature_names_in_`` (or ``x0, x1, ...``) and
        ``classes_``, and for a FitResult its ``feature_names`` (a DataFrame's columns, or ``fit``'s
        ``feature_names``; else ``x0, x1, ...``) and ``0 .. K-1``. Feature names are those of
        every column of ``X`` (``params.n_inputs``); when the gating and the experts read different
        columns (``gating_features``, ``expert_features``), each table names the columns it reads.
    n_threads : int, optional

    Returns
    -------
    Summary
    """
    if y is not None and X is None:
        raise ValueError("y was given without X; standard errors need both")
    result, features, classes = _resolve(model, feature_names, class_names)
    params = result.params
    k, K = params.n_experts, params.n_classes
    if len(features) != params.n_inputs:
        raise ValueError(f"{len(features)} feature names for {params.n_inputs} features")
    if len(classes) != K:
        raise ValueError(f"{len(classes)} class names for {K} classes")
    # Names are of the columns of X; the gating and the experts each name the columns they read.
    gate_features = _gate_feature_names(params, [features[j] for j in params.gating_columns()])
    expert_features = [features[j] for j in params.expert_columns()]
    experts = tuple(str(i) for i in range(k))

    rows = []
    for i in range(k - 1):
        for term in ["intercept", *gate_features]:
            rows.append({"part": "gating", "expert": experts[i], "class": None, "term": term})
    for i in range(k):
        for s in range(K - 1):
            for term in ["intercept", *expert_features]:
                rows.append({"part": "expert", "expert": experts[i], "class": classes[s], "term": term})

    table, gate_share = None, None
    if X is not None:
        X = check_X(X, n_features=params.n_inputs)
        w = check_sample_weight(sample_weight, X.shape[0])
        gate_share = np.average(gate_proba(params, X, n_threads), axis=0, weights=w if w.size else None)
    if y is not None and n_boot is not None:
        from .uncertainty import bootstrap_table

        table = bootstrap_table(model, X, y, n_boot=n_boot, level=level, sample_weight=sample_weight,
                                covariance=covariance, random_state=random_state)
    elif y is not None:
        table = parameter_table(model, X, y, sample_weight=sample_weight, level=level, covariance=covariance,
                                n_threads=n_threads)
    names = table.names if table is not None else None
    if names is None:
        from .params import free_parameter_names, free_parameters

        names, estimate = free_parameter_names(params), free_parameters(params)
    else:
        estimate = table.estimate
    for j, row in enumerate(rows):
        row["name"], row["estimate"] = names[j], float(estimate[j])
        if table is not None:
            row.update({c: float(getattr(table, c)[j]) for c in _STATS})

    inputs_line = None
    if params.separate_inputs:
        inputs_line = (f"gating reads {', '.join(features[j] for j in params.gating_columns())}; experts read "
                       + (", ".join(expert_features) if expert_features else "none (intercept-only experts)"))
    fit = _Fit(result=result, table=table, gate_input_name=_gate_input_name(params), inputs_line=inputs_line)
    header = tuple((label, text) for label, line in HEADER if (text := line(fit)) is not None)
    return Summary(header=header, experts=experts, gate_share=gate_share, classes=tuple(classes),
                   rows=tuple(rows), level=float(level))


def _gate_input_name(params):
    name = params.gating_name
    if name == "identity":
        return "x (standard)"
    return f"{name}(x) (modified)"
