"""Does a fit reach the global maximum of the likelihood? The benchmark of issue 12.

    python bench/global_max.py run [--problems P ...] [--methods M ...] [--seeds 10] [--threads 1]
    python bench/global_max.py run --method 'search-3={"init": "search", "n_init": 3}'   # any fit strategy
    python bench/global_max.py multistart [--problems P ...] [--runs 40]   # the long multi-start
    python bench/global_max.py report        # the Markdown table, into bench/README.md
    python bench/global_max.py truths        # re-derive every problem's truth seed by the rule
    python bench/global_max.py list          # problems and methods
    python bench/global_max.py run --set held-out --methods oracle default   # the held-out truths (any command)

For each problem and method, the share of seeds whose objective comes within 1e-6 (relative) of the best
known maximum, the median shortfall in nats and the median wall time. Everything is stored as one JSON per
(problem, method, seed) under ``bench/results/global/<problem>/<method>/seed-<s>.json``; a run whose
file exists with the same specification is not run again (so ``run`` resumes, and Ctrl-C loses at most
the run in progress).

Problems
--------
``(name, d, k, K, gating, n, truth seed)``. The truth is drawn from ``numpy.random.default_rng(seed)`` in
this order: ``beta0 ~ N(0, 0.5^2)`` (k), ``beta1 ~ N(0, (4/sqrt(d))^2)`` (k, d), ``a ~ N(0, (3/sqrt(d))^2)``
(k, K, d), ``b ~ N(0, 1)`` (k, K), then brought to reference conventions (``MoEParams.normalized``); the
data come from the same generator, ``X ~ Uniform[-1, 1]^d``, ``fastmoe.sample(truth, n, random_state=rng)``.
**Truth-seed rule**: starting from the problem's ``base_seed``, the first seed whose fit started at the
truth (``fastmoe.fit(X, y, k, init=truth, tol=1e-10, max_iter=5000)``) ends converged and not diverged.
The seeds the rule gave are written in ``PROBLEMS``; ``truths`` re-derives them (the rule depends on
fastmoe's stopping and divergence rules, so a later fastmoe may pick another seed: it says so).
``HELD_OUT`` (``--set held-out``, named ``h<i>``) are fifteen more problems by the same rule from other
base seeds, drawn after the search and its defaults were settled on ``PROBLEMS``: whether the table's
reach carries over to truths nobody tuned on. Their table has its own place in the README.

Methods (``METHODS``; one line each to add)
------------------------------------------
``oracle``: the fit started at the truth (1 run; a reference, not a contender). ``kmeans-1``,
``random-1``, ``kmeans-5``: ``fastmoe.fit`` with ``init`` and ``n_init`` as named. ``default``:
``fastmoe.fit`` with the installed fastmoe's defaults (recorded in each result; a change of defaults
reruns it). ``lbfgs-1``: SciPy's L-BFGS-B on the negative log-likelihood over the free-parameter
vector, value and gradient from fastmoe's compiled ``Problem.newton_pass`` (its gradients are those of
the log-likelihood by the Fisher identity), from ``W, V ~ N(0, 1)`` (normalised). ``lbfgs-budget``:
L-BFGS-B from fresh ``N(0, 1)`` starts (the first is ``lbfgs-1``'s) until the wall time ``default`` took on
the same problem and seed is used up (the start in progress is cut off there); the best point. Every
fastmoe fit runs with ``tol=1e-10, max_iter=5000``, so only the start strategy differs from the defaults.
``--method NAME=JSON`` adds a ``fastmoe.fit`` strategy by keyword arguments; one the installed fastmoe
rejects (unknown keyword or value) is skipped with a note.

Divergence: fastmoe fits report their own ``diverged``. An L-BFGS end point is judged by fastmoe's rule
too: it is polished by ``fastmoe.fit(init=<end point>, tol=1e-10, max_iter=1000)`` and takes that fit's
``diverged`` (the polish's objective and time are recorded apart; the method's objective and time are
L-BFGS's own). Diverged runs (the likelihood's supremum at infinity) are counted apart and never reach.

Best known (``best_known.json`` per problem, with its parameters): the best non-diverged objective of
every stored run of every method and seed, including the long multi-start (``multistart``: 40 runs each
of ``kmeans-1`` and ``lbfgs-1`` with seeds 1000..1039). Updated whenever a run beats it; never lowered.

Machine load: the 2-core development machine is shared, so wall times are upper bounds; every result
records the load average before and after, and its CPU time.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import fastmoe
from fastmoe import MoEParams
from fastmoe._monitor import StartLog
from fastmoe.params import free_vector, from_free_vector, gate_input

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "global")
README = os.path.join(HERE, "README.md")
#: The README's generated tables, per problem set: (begin marker, end marker).
MARKERS = {"table": ("<!-- BEGIN GLOBAL (generated by bench/global_max.py report) -->", "<!-- END GLOBAL -->"),
           "held-out": ("<!-- BEGIN HELD-OUT (generated by bench/global_max.py report --set held-out) -->",
                        "<!-- END HELD-OUT -->")}

FIT_TOL, FIT_MAX_ITER = 1e-10, 5000
POLISH_MAX_ITER = 1000
REACH_RTOL = 1e-6
TABLE_SEEDS = 10
MULTISTART_SEED0, MULTISTART_RUNS, MULTISTART_METHODS = 1000, 40, ("kmeans-1", "lbfgs-1")
# L-BFGS-B on the mean negative log-likelihood (per sample, so tolerances do not scale with n): it stops
# when a step gains less than ftol relative or the largest projected gradient entry is below gtol.
LBFGS_OPTIONS = {"maxiter": 20000, "maxfun": 20000, "ftol": 1e-12, "gtol": 1e-8, "maxcor": 20}


# -- problems ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchProblem:
    """A benchmark problem: the model's size, the gating, the sample size and the truth's seed."""

    name: str
    d: int
    k: int
    K: int
    gating: str
    n: int
    base_seed: int  # where the truth-seed rule starts
    seed: int  # the seed the rule gave (``truths`` checks it)

    def truth_and_data(self, seed=None):
        """``(truth, X, y)`` drawn from ``default_rng(seed)`` (this problem's truth seed by default)."""
        rng = np.random.default_rng(self.seed if seed is None else seed)
        d, k, K = self.d, self.k, self.K
        beta0 = rng.normal(0.0, 0.5, size=k)
        beta1 = rng.normal(0.0, 4.0 / math.sqrt(d), size=(k, d))
        a = rng.normal(0.0, 3.0 / math.sqrt(d), size=(k, K, d))
        b = rng.normal(0.0, 1.0, size=(k, K))
        truth = MoEParams(beta0, beta1, a, b, self.gating).normalized()
        X, y = fastmoe.sample(truth, n=self.n, random_state=rng)
        return truth, X, y


def _problem(number, d, k, K, gating, n, seed, prefix="p", base=12000):
    short = {"identity": "id"}.get(gating, gating)
    name = f"{prefix}{number}-d{d}-k{k}-K{K}-{short}-n1e{round(math.log10(n))}"
    return BenchProblem(name, d, k, K, gating, n, base_seed=base + 100 * number, seed=seed)


PROBLEMS = [
    _problem(1, 2, 3, 3, "identity", 10**4, seed=12100),
    _problem(2, 2, 3, 3, "tanh", 10**4, seed=12200),
    _problem(3, 2, 3, 3, "identity", 10**5, seed=12300),
    _problem(4, 5, 2, 4, "identity", 10**4, seed=12400),
    _problem(5, 5, 4, 3, "tanh", 10**5, seed=12500),
    _problem(6, 10, 4, 5, "identity", 10**5, seed=12600),
    _problem(7, 10, 2, 2, "tanh", 10**4, seed=12700),
    _problem(8, 5, 5, 2, "identity", 10**4, seed=12800),
    _problem(9, 2, 2, 5, "identity", 10**6, seed=12900),
]

#: Held out: fresh truths by the same rule from other base seeds, drawn after the search and its
#: defaults were settled on ``PROBLEMS``, to see whether the table's reach carries over (h1-h12: n =
#: 1e4, d in {2, 5}, cheap enough for the 2-core machine; h13-h15: n = 1e5, where the search explores a
#: subsample; ``--set held-out``).
HELD_OUT = [_problem(i, d, k, K, gating, n, seed=seed, prefix="h", base=70000)
            for i, (d, k, K, gating, n, seed) in enumerate([
                (2, 3, 3, "identity", 10**4, 70100), (2, 3, 3, "tanh", 10**4, 70200),
                (5, 2, 4, "identity", 10**4, 70300), (5, 3, 3, "tanh", 10**4, 70400),
                (2, 4, 2, "identity", 10**4, 70500), (5, 4, 3, "identity", 10**4, 70600),
                (2, 2, 4, "tanh", 10**4, 70700), (5, 3, 2, "identity", 10**4, 70800),
                (2, 4, 4, "tanh", 10**4, 70902), (5, 2, 3, "tanh", 10**4, 71000),
                (2, 3, 4, "identity", 10**4, 71100), (5, 4, 2, "tanh", 10**4, 71200),
                (5, 3, 3, "tanh", 10**5, 71300), (10, 3, 4, "identity", 10**5, 71400),
                (2, 4, 3, "identity", 10**5, 71500)], start=1)]
SETS = {"table": PROBLEMS, "held-out": HELD_OUT}


def find_problems(names, pool=PROBLEMS):
    """Problems of ``pool`` by name, number (``6`` or ``p6``) or, failing those, substring of the name."""
    if not names:
        return list(pool)
    chosen = []
    for name in names:
        hits = [p for p in pool if name in (p.name, p.name.split("-")[0]) or p.name.split("-")[0][1:] == name]
        hits = hits or [p for p in pool if name in p.name]
        if not hits:
            raise SystemExit(f"no problem matches {name!r}; problems: {', '.join(p.name for p in pool)}")
        chosen += [p for p in hits if p not in chosen]
    return chosen


# -- the runs ------------------------------------------------------------------------------------------
class Skip(Exception):
    """A method that cannot run here (unknown strategy, missing budget): noted, not stored."""


@dataclass
class Case:
    """One problem's data, drawn once per process, and the settings every method shares."""

    problem: BenchProblem
    truth: MoEParams
    X: np.ndarray
    y: np.ndarray
    n_threads: int
    store: "Store"


def _silent_fit(X, y, case, **kwargs):
    """``fastmoe.fit`` with the benchmark's tolerance, warnings kept out of the way (the result says it)."""
    p = case.problem
    options = dict(n_classes=p.K, gating=p.gating, tol=FIT_TOL, max_iter=FIT_MAX_ITER, n_threads=case.n_threads)
    options.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fastmoe.fit(X, y, p.k, **options)


def _jsonable(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str) or value is None:
        return value
    if hasattr(value, "to_dict"):  # a StartLog: what every start reached
        return _jsonable(value.to_dict())
    if isinstance(value, (tuple, list)) or (isinstance(value, np.ndarray) and value.ndim == 1 and value.size <= 64):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _fit_summary(result, elapsed, cpu):
    """A FitResult as a result record: every small field (new fields too), not the params or history."""
    out = {"objective": float(result.objective), "loglik": float(result.loglik), "diverged": bool(result.diverged),
           "converged": bool(result.converged), "time": elapsed, "cpu_time": cpu, "n_iter": int(result.n_iter),
           "fit_time": float(result.time)}
    for f in dataclasses.fields(result):
        if f.name in out or f.name in ("params", "history", "time"):
            continue
        value = getattr(result, f.name)
        if isinstance(value, np.ndarray) and value.size > 64:
            continue
        out[f.name] = _jsonable(value)
    out["max_abs_slope"] = _max_abs_slope(result.params)
    return out, result.params


def _max_abs_slope(params):
    return float(max(np.abs(params.beta1).max(initial=0.0), np.abs(params.a).max(initial=0.0)))


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def fit_strategy(kwargs):
    """A method running ``fastmoe.fit(..., random_state=seed, **kwargs)``."""

    def run(X, y, case, seed):
        result, elapsed, cpu = _timed(lambda: _silent_fit(X, y, case, random_state=seed, **kwargs))
        return _fit_summary(result, elapsed, cpu)

    return run


def run_oracle(X, y, case, seed):
    result, elapsed, cpu = _timed(lambda: _silent_fit(X, y, case, init=case.truth))
    return _fit_summary(result, elapsed, cpu)


def fit_defaults():
    """The keyword defaults of the installed ``fastmoe.fit`` (what ``default`` runs with)."""
    return {name: _jsonable(par.default) for name, par in inspect.signature(fastmoe.fit).parameters.items()
            if par.default is not inspect.Parameter.empty}


class _OutOfTime(Exception):
    pass


def _fastmoe_problem(X, y, problem, n_threads):
    """The engine's ``Problem`` for these data, built as ``fastmoe.fit`` builds it."""
    from fastmoe._problem import Problem
    from fastmoe._validation import check_sample_weight, check_X, check_y, effective_n_threads

    X = check_X(X)
    y, K = check_y(y, X.shape[0], problem.K)
    w = check_sample_weight(None, X.shape[0])
    return Problem(X, gate_input(problem.gating, X), y, w, problem.k, K, effective_n_threads(n_threads))


def _random_start(rng, problem):
    W = rng.normal(size=(problem.k, 1 + problem.d))  # identity and tanh keep d gating features
    V = rng.normal(size=(problem.k, problem.K, 1 + problem.d))
    return MoEParams.from_packed(W, V, problem.gating).normalized().packed()


def lbfgs(engine, W0, V0, deadline=None):
    """L-BFGS-B from ``(W0, V0)`` on the mean negative log-likelihood; the best point it evaluated.

    Past ``deadline`` (perf_counter seconds) the next evaluation stops the run, keeping what it had.
    Returns ``(W, V, info)``.
    """
    from scipy.optimize import minimize

    n = engine.total_weight
    best = {"f": math.inf, "theta": free_vector(W0, V0), "nfev": 0}

    def fun(theta):
        if deadline is not None and best["nfev"] > 0 and time.perf_counter() > deadline:
            raise _OutOfTime
        W, V = from_free_vector(theta, W0, V0)
        pass_ = engine.newton_pass(W, V)
        best["nfev"] += 1
        f = -pass_.loglik / n
        grad = -np.concatenate([pass_.grad_gate, pass_.grad_expert.ravel()]) / n
        if not (math.isfinite(f) and np.isfinite(grad).all()):
            return 1e300, np.zeros_like(theta)  # a wild line-search trial: reject it, do not stop
        if f < best["f"]:
            best["f"], best["theta"] = f, theta.copy()
        return f, grad

    info = {"cut": False}
    try:
        res = minimize(fun, best["theta"].copy(), jac=True, method="L-BFGS-B", options=LBFGS_OPTIONS)
        info.update(nit=int(res.nit), message=str(res.message), status=int(res.status))
    except _OutOfTime:
        info.update(cut=True, message="cut off by the time budget")
    info["nfev"] = best["nfev"]
    W, V = from_free_vector(best["theta"], W0, V0)
    return W, V, info


def _polish(X, y, case, params):
    """fastmoe's verdict on an end point: a short fit from it (its diverged, objective and time)."""
    result, elapsed, _ = _timed(lambda: _silent_fit(X, y, case, init=params, max_iter=POLISH_MAX_ITER))
    return {"diverged": bool(result.diverged), "polish_objective": float(result.objective),
            "polish_converged": bool(result.converged), "polish_n_iter": int(result.n_iter), "polish_time": elapsed}


def lbfgs_multistart(X, y, case, seed, n_starts=None, budget=None):
    """Best of ``n_starts`` L-BFGS-B runs, or of as many as fit in ``budget`` seconds, from N(0, 1) starts."""
    rng = np.random.default_rng(seed)
    started, cpu0 = time.perf_counter(), time.process_time()
    deadline = None if budget is None else started + budget
    engine = _fastmoe_problem(X, y, case.problem, case.n_threads)
    best, runs = None, []
    while (n_starts is None or len(runs) < n_starts) and (deadline is None or time.perf_counter() < deadline or not runs):
        W, V, info = lbfgs(engine, *_random_start(rng, case.problem), deadline)
        loglik = float(engine.loglik(W, V))
        runs.append({"loglik": loglik, **info})
        if best is None or loglik > best[0]:
            best = (loglik, W, V)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
    loglik, W, V = best
    params = MoEParams.from_packed(W, V, case.problem.gating)
    out = {"objective": loglik, "loglik": loglik, "time": elapsed, "cpu_time": cpu, "converged": None,
           "n_starts": len(runs), "n_iter": sum(r.get("nit", 0) for r in runs), "nfev": sum(r["nfev"] for r in runs),
           "starts": [{k: r[k] for k in ("loglik", "nfev", "cut", "message")} for r in runs],
           "max_abs_slope": _max_abs_slope(params)}
    if budget is not None:
        out["budget"] = budget
    out.update(_polish(X, y, case, params))
    return out, params


def run_lbfgs_budget(X, y, case, seed):
    return lbfgs_multistart(X, y, case, seed, budget=_budget(case.store, case.problem, seed))


def _budget(store, problem, seed):
    record = store.load(problem.name, "default", seed)
    if record is None or record.get("spec") != _spec_of("default", problem, seed, store):
        raise Skip(f"needs the current `default` result for seed {seed} (its wall time is the budget): run it first")
    return float(record["time"])


@dataclass
class Method:
    name: str
    run: Callable  # (X, y, case, seed) -> (record dict, MoEParams)
    description: str
    spec: Callable = None  # (problem, seed, store) -> dict a stored result must match to count as done
    seeded: bool = True
    kwargs: dict = field(default_factory=dict)


def _strategy_spec(kwargs):
    return lambda problem, seed, store: {"kwargs": _jsonable(kwargs)}


METHODS = {}


def register(method):
    METHODS[method.name] = method
    return method


def register_strategy(name, kwargs, description=None):
    """A ``fastmoe.fit`` strategy by keyword arguments (besides tol, max_iter, random_state)."""
    description = description or "fastmoe.fit(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
    return register(Method(name, fit_strategy(kwargs), description, _strategy_spec(kwargs), kwargs=dict(kwargs)))


register(Method("oracle", run_oracle, "fastmoe.fit(init=truth): a reference, not a contender",
                lambda p, s, st: {"init": "truth"}, seeded=False))
register_strategy("kmeans-1", {"init": "kmeans", "n_init": 1})
register_strategy("random-1", {"init": "random", "n_init": 1})
register_strategy("kmeans-5", {"init": "kmeans", "n_init": 5})
register(Method("default", fit_strategy({}), "fastmoe.fit with the installed defaults",
                lambda p, s, st: {"kwargs": {}, "defaults": fit_defaults()}))
register(Method("lbfgs-1", lambda X, y, case, seed: lbfgs_multistart(X, y, case, seed, n_starts=1),
                "scipy L-BFGS-B on the log-likelihood (fastmoe's gradient), one N(0,1) start",
                lambda p, s, st: {"lbfgs": LBFGS_OPTIONS, "starts": 1}))
register(Method("lbfgs-budget", run_lbfgs_budget,
                "L-BFGS-B from fresh N(0,1) starts for as long as `default` took on this seed; the best",
                lambda p, s, st: {"lbfgs": LBFGS_OPTIONS, "budget": _budget(st, p, s)}))
BUILTIN = tuple(METHODS)
DEFAULT_RUN = ("oracle", "kmeans-1", "random-1", "kmeans-5", "default", "lbfgs-1", "lbfgs-budget")


def _spec_of(method_name, problem, seed, store):
    method = METHODS[method_name]
    return _jsonable(method.spec(problem, seed, store)) if method.spec else {}


def check_strategy(method):
    """Raise Skip when the installed ``fastmoe.fit`` rejects the strategy's keyword arguments."""
    if not method.kwargs:
        return
    known = inspect.signature(fastmoe.fit).parameters
    unknown = sorted(set(method.kwargs) - set(known))
    if unknown:
        raise Skip(f"the installed fastmoe.fit ({fastmoe.__version__}) has no keyword {', '.join(unknown)}")
    probe = BenchProblem("probe", 2, 2, 2, "identity", 400, 0, 0)
    truth, X, y = probe.truth_and_data()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fastmoe.fit(X, y, 2, n_classes=2, max_iter=2, random_state=0, n_threads=1,
                        **{"tol": FIT_TOL, **method.kwargs})
    except (TypeError, ValueError) as exc:
        raise Skip(f"the installed fastmoe.fit rejects {method.kwargs}: {exc}") from None


# -- the store -----------------------------------------------------------------------------------------
def _git_commit():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


class Store:
    """One JSON per (problem, method, seed), and each problem's best known maximum."""

    def __init__(self, root=RESULTS):
        self.root = root

    def path(self, problem_name, method_name, seed):
        return os.path.join(self.root, problem_name, method_name, f"seed-{seed}.json")

    def load(self, problem_name, method_name, seed):
        try:
            with open(self.path(problem_name, method_name, seed)) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def save(self, record):
        _write_json(self.path(record["problem"], record["method"], record["seed"]), record)

    def records(self, problem_name):
        out = []
        base = os.path.join(self.root, problem_name)
        if not os.path.isdir(base):
            return out
        for method in sorted(os.listdir(base)):
            folder = os.path.join(base, method)
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                if name.startswith("seed-") and name.endswith(".json"):
                    with open(os.path.join(folder, name)) as fh:
                        out.append(json.load(fh))
        return out

    def best_known(self, problem_name):
        try:
            with open(os.path.join(self.root, problem_name, "best_known.json")) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def offer_best(self, record, params):
        """Keep ``record`` as the problem's best known maximum if it is one (non-diverged and higher)."""
        if record.get("diverged") or not math.isfinite(record["objective"]):
            return False
        best = self.best_known(record["problem"])
        if best is not None and best["objective"] >= record["objective"]:
            return False
        _write_json(os.path.join(self.root, record["problem"], "best_known.json"), {
            "objective": record["objective"], "method": record["method"], "seed": record["seed"],
            "commit": record["commit"], "params": params.to_dict()})
        return True


# -- running -------------------------------------------------------------------------------------------
def _context():
    from _benchlib import cpu_model

    return {"fastmoe": fastmoe.__version__, "commit": _git_commit(), "cpu": cpu_model(), "host": platform.node(),
            "logical_cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "kernels": getattr(sys.modules.get("fastmoe._dispatch"), "variant", None)}


def run_grid(problems, methods, seeds, n_threads, store, log=print):
    """Run every missing (problem, method, seed); returns (done, skipped, failed) counts."""
    context = _context()
    counts = {"ran": 0, "kept": 0, "skipped": 0, "failed": 0}
    notes = set()
    strategies_ok = {}
    for problem in problems:
        case = None
        for method in methods:
            if method.name not in strategies_ok:
                try:
                    check_strategy(method)
                    strategies_ok[method.name] = None
                except Skip as exc:
                    strategies_ok[method.name] = str(exc)
            if strategies_ok[method.name]:
                note = f"skipped {method.name}: {strategies_ok[method.name]}"
                if note not in notes:
                    log(note)
                    notes.add(note)
                counts["skipped"] += 1
                continue
            for seed in (seeds if method.seeded else [0]):
                try:
                    spec = _spec_of(method.name, problem, seed, store)
                except Skip as exc:
                    log(f"{problem.name} {method.name} seed {seed}: skipped, {exc}")
                    counts["skipped"] += 1
                    continue
                old = store.load(problem.name, method.name, seed)
                if old is not None and old.get("spec") == spec:
                    counts["kept"] += 1
                    continue
                if case is None:
                    truth, X, y = problem.truth_and_data()
                    case = Case(problem, truth, X, y, n_threads, store)
                load0 = list(os.getloadavg())
                try:
                    record, params = method.run(case.X, case.y, case, seed)
                except Skip as exc:
                    log(f"{problem.name} {method.name} seed {seed}: skipped, {exc}")
                    counts["skipped"] += 1
                    continue
                except Exception:  # noqa: BLE001 - one failing run must not end a long benchmark
                    log(f"{problem.name} {method.name} seed {seed}: FAILED\n{traceback.format_exc()}")
                    counts["failed"] += 1
                    continue
                record.update(problem=problem.name, method=method.name, seed=seed, spec=spec, n_threads=n_threads,
                              loadavg_start=load0, loadavg_end=list(os.getloadavg()),
                              finished=time.strftime("%Y-%m-%d %H:%M:%S"), **context)
                store.save(record)
                new_best = store.offer_best(record, params)
                counts["ran"] += 1
                log(f"{problem.name} {method.name:>12s} seed {seed:>4}: objective {record['objective']:.6f}"
                    f"{' (diverged)' if record.get('diverged') else ''}, {record['time']:.2f} s"
                    f"{', new best known' if new_best else ''}")
    return counts


# -- the truth-seed rule -------------------------------------------------------------------------------
def truth_seed(problem, n_threads=None, log=print, limit=50):
    """The first seed from ``problem.base_seed`` whose truth-started fit converges without diverging."""
    for seed in range(problem.base_seed, problem.base_seed + limit):
        truth, X, y = problem.truth_and_data(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fastmoe.fit(X, y, problem.k, n_classes=problem.K, init=truth, tol=FIT_TOL,
                                 max_iter=FIT_MAX_ITER, n_threads=n_threads)
        log(f"  {problem.name} seed {seed}: converged={result.converged} diverged={result.diverged} "
            f"n_iter={result.n_iter} ({result.time:.2f} s)")
        if result.converged and not result.diverged:
            return seed
    raise RuntimeError(f"{problem.name}: no seed in {limit} from {problem.base_seed} satisfies the rule")


# -- the report ----------------------------------------------------------------------------------------
def _fmt_time(seconds):
    if seconds is None or not math.isfinite(seconds):
        return "–"
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.1f} s" if seconds < 100 else f"{seconds:.0f} s"


def _fmt_nats(value):
    if value is None:
        return "–"
    if value == 0:
        return "0"
    return f"{value:.2g}" if value < 0.01 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def summarise(store, problem, seeds):
    """``(best known, its source, multi-start runs, runs diverged above the best, per-method summary)``.

    The per-method summary (runs, reached, median shortfall, median time, diverged, ...) covers the
    table's seeds; the count of runs diverged above the best covers every stored run."""
    records = store.records(problem.name)
    cached = store.best_known(problem.name)
    best = max([r["objective"] for r in records if not r.get("diverged") and math.isfinite(r["objective"])]
               + ([cached["objective"]] if cached else []), default=None)
    source = None
    if cached is not None and cached["objective"] >= (best if best is not None else -math.inf):
        source = f"{cached['method']} seed {cached['seed']}"
    n_multi = sum(1 for r in records if r["method"] in MULTISTART_METHODS and r["seed"] >= MULTISTART_SEED0)
    above = (lambda value: best is not None and value > best + REACH_RTOL * abs(best))
    # Evidence that the best finite maximum is not the supremum: a stored run that diverged above it, or,
    # for a search whose StartLog is stored (as a dict), one of its runs on all the rows that did: its
    # starts (unless they explored a subsample) and its split-and-merge moves (the run's own answer is
    # one of those, so the record itself is not counted again).
    def runs_on_all_rows(r):
        log = r.get("starts")
        if not isinstance(log, dict):
            return [(r["objective"], r.get("diverged"))]
        starts = zip(log["objectives"], log["diverged"]) if log.get("subsample") is None else []
        return [*starts, *zip(log.get("moves", []), log.get("moves_diverged", []))]

    diverged_above = sum(1 for r in records for value, off in runs_on_all_rows(r) if off and above(value))
    rows = {}
    for r in records:
        method = METHODS.get(r["method"])
        if r["seed"] not in seeds and (method is None or method.seeded):
            continue
        rows.setdefault(r["method"], []).append(r)
    out = {}
    for name, rs in rows.items():
        ok = [r for r in rs if not r.get("diverged")]
        short = [max(best - r["objective"], 0.0) for r in ok] if best is not None else []
        hit = [best is not None and r["objective"] >= best - REACH_RTOL * abs(best) for r in ok]
        logged = all(isinstance(r.get("starts"), dict) for r in rs)
        out[name] = {"runs": len(rs), "reached": sum(hit), "diverged": len(rs) - len(ok),
                     "warned": sum(map(_warned, rs)) if logged else None,
                     "misses_warned": sum(_warned(r) for r, h in zip(ok, hit) if not h) if logged else None,
                     "diverged_above": sum(1 for r in rs if r.get("diverged") and above(r["objective"])),
                     "shortfall": statistics.median(short) if short else None,
                     "time": statistics.median(r["time"] for r in rs),
                     "n_starts": statistics.median(r["n_starts"] for r in rs) if all("n_starts" in r for r in rs)
                     else None,
                     "commits": sorted({r.get("commit", "?") for r in rs}),
                     "spec": rs[0].get("spec"), "loads": [r.get("loadavg_start", [None])[0] for r in rs],
                     "threads": sorted({r.get("n_threads") for r in rs}),
                     "machines": sorted({f"{r.get('cpu')}, kernels `{r.get('kernels')}`" for r in rs})}
    return best, source, n_multi, diverged_above, out


def _warned(record):
    """Whether the stored fit warned that its answer may not be the global maximum (its StartLog's
    SearchWarning: starts that diverged above it, and, where it converged, only one start reaching it)."""
    return StartLog.from_dict(record["starts"]).search_warning(bool(record.get("converged"))) is not None


def _method_order(names):
    return [m for m in BUILTIN if m in names] + sorted(set(names) - set(BUILTIN))


def report_markdown(store, problems, seeds, problem_set="table"):
    begin, end = MARKERS[problem_set]
    option = "" if problem_set == "table" else f" --set {problem_set}"
    lines = [begin, "", f"*Generated by `python bench/global_max.py report{option}` from `bench/results/global/`.*", ""]
    table = ["| problem | best known | method | reach | median shortfall (nats) | median time | × oracle | diverged "
             "| warned (misses) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    commits, loads, threads, machines, extra = set(), [], set(), set(), {}
    any_rows = False
    for problem in problems:
        best, source, n_multi, diverged_above, rows = summarise(store, problem, seeds)
        if not rows:
            continue
        any_rows = True
        first = True
        for name in _method_order(rows):
            s = rows[name]
            commits.update(s["commits"])
            loads += [x for x in s["loads"] if x is not None]
            threads.update(t for t in s["threads"] if t is not None)
            machines.update(s["machines"])
            if name not in BUILTIN:
                extra[name] = s["spec"]
            label = (f"{problem.name}" if first else "")
            best_cell = (f"{best:.4f}" + (f"<br>({source}; multi-start {n_multi} runs)" if source else "")
                         + (f"<br>{diverged_above} runs, starts or moves diverged above it (no MLE found)"
                            if diverged_above else "")) if first and best is not None else ""
            first = False
            reach = f"{s['reached']}/{s['runs']}"
            div = str(s["diverged"]) + (f" ({s['diverged_above']} above best)" if s["diverged_above"] else "")
            t = _fmt_time(s["time"]) + (f" ({s['n_starts']:g} starts)" if name == "lbfgs-budget" and s["n_starts"] else "")
            oracle = rows.get("oracle", {}).get("time")
            ratio = f"{s['time'] / oracle:.1f}" if oracle and name != "oracle" else ""
            misses = s["runs"] - s["diverged"] - s["reached"]
            warned = "" if s["warned"] is None else f"{s['warned']} ({s['misses_warned']}/{misses})"
            table.append(f"| {label} | {best_cell} | {name} | {reach} | {_fmt_nats(s['shortfall'])} | {t} | {ratio} "
                         f"| {div} | {warned} |")
    if not any_rows:
        lines += [f"No results yet: `python bench/global_max.py run{option}`.", "", end]
        return "\n".join(lines)
    ctx = _context()
    lines += [f"- Machines of the runs: {'; '.join(sorted(machines))}; fastmoe threads per fit: "
              f"{', '.join(str(t) for t in sorted(threads))}.",
              f"- fastmoe {ctx['fastmoe']}; results from commit(s) {', '.join(f'`{c}`' for c in sorted(commits))} "
              f"(report written at `{ctx['commit']}`, {time.strftime('%Y-%m-%d')}).",
              f"- Load average (1 min) at the runs' starts: median {statistics.median(loads):.1f}, "
              f"max {max(loads):.1f} (2 cores: times above ~1 are inflated by other work)." if loads else "",
              f"- Seeds {min(seeds)}..{max(seeds)} per method (oracle: 1 run); reach = non-diverged objective within "
              f"{REACH_RTOL:g} relative of the best known; shortfall over non-diverged runs; × oracle = median "
              "time over the oracle fit's (issue 12 asks at most 5 for `default` at n >= 1e5); warned = fits "
              "whose search warns that its answer may not be the global maximum (`SearchWarning`: best reached "
              "by one start only, or a start diverged above it; recomputed from the stored start log), and in "
              "brackets x/y: x of the y non-diverged runs that missed the best known warned (blank where a "
              "start log is not stored as a dict: oracle and single-start fits, runs from before logs were "
              "stored).", ""]
    for name, spec in sorted(extra.items()):
        lines.append(f"- `{name}`: `fastmoe.fit(**{json.dumps((spec or {}).get('kwargs'))})`")
    if extra:
        lines.append("")
    lines += table + ["", end]
    return "\n".join(line for line in lines if line is not None)


def write_readme(markdown, problem_set="table", path=README):
    begin, end = MARKERS[problem_set]
    with open(path) as fh:
        text = fh.read()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + markdown + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + markdown + "\n"
    with open(path + ".tmp", "w") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


# -- command line --------------------------------------------------------------------------------------
def _parse_method(text):
    name, sep, spec = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=JSON-KWARGS, got {text!r}")
    try:
        kwargs = json.loads(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{name}: the keyword arguments are not JSON: {exc}") from None
    if not isinstance(kwargs, dict):
        raise argparse.ArgumentTypeError(f"{name}: expected a JSON object of keyword arguments, got {spec!r}")
    return name, kwargs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--problems", nargs="*", default=[], help="names, numbers (6, p6) or substrings")
    common.add_argument("--set", dest="problem_set", choices=tuple(SETS), default="table",
                        help="the problems: the table's (default) or the held-out fresh truths")
    common.add_argument("--results", default=RESULTS, help="result folder (default bench/results/global)")
    run_p = sub.add_parser("run", parents=[common], help="run the missing (problem, method, seed) cases")
    run_p.add_argument("--methods", nargs="*", default=None, help=f"default: {' '.join(DEFAULT_RUN)}")
    run_p.add_argument("--method", action="append", type=_parse_method, default=[], metavar="NAME=JSON",
                       help="add (and run) a fastmoe.fit strategy by keyword arguments")
    run_p.add_argument("--seeds", type=int, default=TABLE_SEEDS, help="seeds 0..N-1 (default 10)")
    run_p.add_argument("--threads", type=int, default=1, help="fastmoe threads per fit (default 1)")
    multi = sub.add_parser("multistart", parents=[common], help="the long multi-start behind the best known")
    multi.add_argument("--runs", type=int, default=MULTISTART_RUNS)
    multi.add_argument("--threads", type=int, default=1)
    rep = sub.add_parser("report", parents=[common], help="write the table into bench/README.md")
    rep.add_argument("--seeds", type=int, default=TABLE_SEEDS)
    rep.add_argument("--print", action="store_true", help="print the table instead of writing the README")
    tr = sub.add_parser("truths", parents=[common], help="re-derive the truth seeds by the rule")
    tr.add_argument("--threads", type=int, default=None)
    sub.add_parser("list", help="problems and methods")
    args = parser.parse_args(argv)

    if args.command == "list":
        for p in PROBLEMS + HELD_OUT:
            print(f"{p.name:28s} d={p.d} k={p.k} K={p.K} {p.gating:8s} n={p.n:>8d} seed={p.seed} (rule from {p.base_seed})")
        for m in METHODS.values():
            print(f"{m.name:14s} {m.description}")
        return 0
    problems = find_problems(args.problems, SETS[args.problem_set])
    store = Store(args.results)
    if args.command == "truths":
        bad = 0
        for p in problems:
            seed = truth_seed(p, args.threads)
            status = "ok" if seed == p.seed else f"MISMATCH: PROBLEMS says {p.seed}"
            bad += seed != p.seed
            print(f"{p.name}: truth seed {seed} ({status})")
        return 1 if bad else 0
    if args.command == "report":
        markdown = report_markdown(store, problems, list(range(args.seeds)), args.problem_set)
        if args.print:
            print(markdown)
        else:
            write_readme(markdown, args.problem_set)
            print(f"wrote the table into {os.path.relpath(README)}")
        return 0
    started = time.perf_counter()
    if args.command == "multistart":
        seeds = list(range(MULTISTART_SEED0, MULTISTART_SEED0 + args.runs))
        methods = [METHODS[m] for m in MULTISTART_METHODS]
    else:
        for name, kwargs in args.method:
            if name in BUILTIN:
                parser.error(f"--method {name}: that name is a built-in method")
            register_strategy(name, kwargs)
        names = args.methods if args.methods is not None else (list(DEFAULT_RUN) if not args.method else [])
        names += [name for name, _ in args.method if name not in names]
        unknown = [n for n in names if n not in METHODS]
        if unknown:
            parser.error(f"unknown method(s) {unknown}; known: {', '.join(METHODS)} (add one with --method NAME=JSON)")
        methods = [METHODS[n] for n in names]
        seeds = list(range(args.seeds))
    counts = run_grid(problems, methods, seeds, args.threads, store,
                      log=lambda msg: print(msg, flush=True))
    print(f"ran {counts['ran']}, kept {counts['kept']} stored, skipped {counts['skipped']}, failed {counts['failed']} "
          f"in {time.perf_counter() - started:.0f} s", flush=True)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
