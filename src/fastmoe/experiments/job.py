"""One job of a rate experiment, as it runs on a worker.

:func:`run_job` draws the data of one ``(n, replication)`` cell from the seeds of
:func:`~fastmoe.experiments.seeds.job_streams`, fits the model and returns a *record*: a flat dict of
plain Python values that the coordinating process stores. Everything that can go wrong inside a fit is
recorded in the record instead of raised, so that one bad job never stops a study:

``status``
    ``"ok"``; ``"not_converged"`` (the fit reached ``max_iter``, or its steps stalled); ``"diverged"`` (the fit reports diverging
    coefficients, or a fitted coefficient exceeds ``coef_limit``: quasi-separation, the MLE does not
    exist); ``"failed"`` (the fit raised; ``error`` holds the exception). The runner adds ``"crashed"``
    for a job that killed its worker process.
``warnings``
    Messages of the warnings raised during the job (``ConvergenceWarning`` included), not shown.
``bound_active``, ``active_bounds``
    Whether some free parameter ended on the box of ``fit.bounds`` (false without a box), and their
    names (:attr:`fastmoe.FitResult.active_bounds`). A fit in a box on every parameter is never
    ``diverged`` (the constrained maximum exists); one at a bound is counted by the report instead.

A data-driven fit (``fit.init`` other than ``"truth"``) also records how settled its answer is:
``n_starts`` (the starts of :attr:`fastmoe.FitResult.starts`, relocation moves included) and ``n_best``
(how many reached the kept maximum). With ``fit.oracle_check`` the job then fits the same data again from
the start near the truth that ``init = "truth"`` would use (same random stream, so that fit is the oracle
preset's fit of this job) and records it under ``oracle_*`` (``oracle_objective``, ``oracle_loglik``,
``oracle_status``, its losses, time and parameters), with the comparison:

``oracle_gap``
    ``oracle_objective - objective``: how many nats the data-driven fit ended below the oracle-started one
    (negative when it ended higher). Objectives are penalised log-likelihoods (``loglik`` when ``l2 = 0``).
``same_maximum``
    ``|oracle_gap| <= 1e-6 * max(|objective|, |oracle_objective|, 1)`` (:data:`SAME_MAXIMUM_RTOL`, the
    rule by which :class:`fastmoe.FitResult.starts` counts starts that reached one maximum, whose
    :func:`fastmoe._monitor.same_maximum` is used here).
``reached_oracle``
    The same maximum or a higher one: ``oracle_gap <= 1e-6 * max(...)``.

:func:`run_batch` runs a list of jobs in one task (to amortise per-task scheduling overhead) and is what
the runner ships to worker processes: it takes the definition as JSON text, so a task is small and
self-contained.
"""

from __future__ import annotations

import functools
import math
import os
import socket
import time
import traceback
import warnings
from typing import List, Sequence, Tuple

import numpy as np
from threadpoolctl import threadpool_limits

from .. import __version__, fit, loglik, sample
from .._monitor import same_maximum
from .definition import Experiment
from .scoring import score
from .starts import init_near_truth

__all__ = ["run_job", "run_batch", "crashed_record", "STATUSES"]

#: Every status a record can have, best first.
STATUSES = ("ok", "not_converged", "diverged", "failed", "crashed")

def _base_record(experiment: Experiment, n: int, replication: int) -> dict:
    return {
        "experiment": experiment.name,
        "n": int(n),
        "replication": int(replication),
        "seed": [experiment.base_seed, int(n), int(replication)],
        "status": "failed",
        "error": None,
        "fastmoe_version": __version__,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def crashed_record(experiment: Experiment, n: int, replication: int, why: str) -> dict:
    """The record of a job whose process died (written by the coordinator, not the worker)."""
    record = _base_record(experiment, n, replication)
    record.update(status="crashed", error=why, host=None, pid=None)
    return record


def _max_abs_coef(params) -> float:
    p = params.normalized()
    return float(max(np.abs(p.beta0).max(), np.abs(p.beta1).max(), np.abs(p.a).max(), np.abs(p.b).max()))


def run_job(experiment: Experiment, n: int, replication: int, n_threads: int = 1) -> dict:
    """Run job ``(n, replication)`` of ``experiment`` and return its record.

    Parameters
    ----------
    experiment : Experiment
    n : int
        Sample size.
    replication : int
        Replication index.
    n_threads : int, default=1
        OpenMP threads of the fit, passed explicitly (an environment variable set after the worker's
        OpenMP runtime started would not reach it).

    Returns
    -------
    dict
        Plain Python values; see the module docstring for ``status``.
    """
    start = time.perf_counter()
    record = _base_record(experiment, n, replication)
    record["n_threads"] = int(n_threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            record.update(_fit_and_score(experiment, n, replication, n_threads))
        except Exception as exc:  # recorded, not raised: one bad job must not stop a study
            record["status"] = "failed"
            record["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            record["traceback"] = traceback.format_exc(limit=8)
    # Keep the distinct messages only: a crawling fit may warn on every iteration.
    record["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    record["job_time"] = time.perf_counter() - start
    return record


def job_data(experiment: Experiment, n: int, replication: int):
    """``(truth, streams, X, y)`` of one job, drawn from the study's seeds: the data its fit sees, the
    same on every machine and in every later check of a stored fit."""
    truth = experiment.truth_at(n)
    streams = experiment.streams(n, replication)
    X = experiment.x_law.sample(streams["x"], n, truth.n_inputs)  # every column; the truth selects its own
    X, y = sample(truth, X=X, random_state=streams["y"])
    return truth, streams, X, y


def _fit_and_score(experiment: Experiment, n: int, replication: int, n_threads: int) -> dict:
    truth, streams, X, y = job_data(experiment, n, replication)
    opts = experiment.fit

    def near_truth():
        # The oracle start (MODEL.md section 5); the "init" stream is used by nothing else, so the start is
        # the same whether it is the job's fit or its oracle check.
        return init_near_truth(truth, experiment.n_experts, streams["init"], opts.init_scale, opts.split_cells,
                               opts.split_spread)

    def run_fit(init, n_init):
        return fit(X, y, experiment.n_experts, n_classes=truth.n_classes, gating=truth.gating,
                   gating_features=truth.gating_features, expert_features=truth.expert_features, init=init,
                   n_init=n_init, max_iter=opts.max_iter, tol=opts.tol, l2=opts.l2, ridge=opts.ridge,
                   bounds=opts.bounds, n_threads=n_threads, random_state=streams["fit"])

    if opts.init == "truth":
        result = run_fit(near_truth(), 1)
    else:
        result = run_fit(opts.init, opts.n_init)  # n_init None: fastmoe.fit's default for the search
    out = _fit_columns(experiment, result)
    out["loglik_true"] = float(loglik(truth, X, y))
    if result.starts is not None:
        out["n_starts"] = int(result.starts.objectives.size)
        out["n_best"] = int(result.starts.n_best)
    if experiment.truth_path is not None:
        out["path_step"] = experiment.truth_path.step(n)
    out.update(score(result.params, truth, experiment.losses, experiment.exact_translation))
    out["params"] = result.params.to_dict()
    if opts.oracle_check:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            oracle = run_fit(near_truth(), 1)
        columns = _fit_columns(experiment, oracle)
        columns.update(score(oracle.params, truth, experiment.losses, experiment.exact_translation))
        out.update({f"oracle_{key}": value for key, value in columns.items()})
        out["oracle_params"] = oracle.params.to_dict()
        out["oracle_warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        gap = out["oracle_objective"] - out["objective"]
        out["oracle_gap"] = float(gap)
        out["same_maximum"] = bool(same_maximum(out["objective"], out["oracle_objective"]))
        out["reached_oracle"] = bool(out["same_maximum"] or gap < 0)
    return out


def _fit_columns(experiment: Experiment, result) -> dict:
    """The columns that describe one fit (not its scores), its ``status`` included."""
    max_abs_coef = _max_abs_coef(result.params)
    out = {
        "fit_time": float(result.time),
        "n_iter": int(result.n_iter),
        "converged": bool(result.converged),
        "diverged": bool(result.diverged),
        "hit_max_iter": bool(result.n_iter >= experiment.fit.max_iter),
        "n_empty_experts": len(result.empty_experts),
        "message": str(result.message),
        "loglik": float(result.loglik),
        "objective": float(result.objective),
        "max_abs_coef": max_abs_coef,
        "bound_active": bool(result.active_bounds),
        "active_bounds": list(result.active_bounds),
    }
    if result.diverged or not math.isfinite(max_abs_coef) or max_abs_coef > experiment.coef_limit:
        out["status"] = "diverged"
    elif not result.converged:
        out["status"] = "not_converged"
    else:
        out["status"] = "ok"
    return out


@functools.lru_cache(maxsize=8)
def _experiment_from_json(definition: str) -> Experiment:
    # Workers receive the definition as text; parse it once per worker, not once per job.
    import json

    return Experiment.from_dict(json.loads(definition))


def run_batch(definition: str, jobs: Sequence[Tuple[int, int]], n_threads: int = 1) -> List[dict]:
    """Run several jobs in one task; the unit of work the runner ships to workers.

    Parameters
    ----------
    definition : str
        :meth:`Experiment.to_json` of the experiment.
    jobs : sequence of (n, replication)
    n_threads : int, default=1
        OpenMP threads per fit.

    Returns
    -------
    list of dict
        One record per job, in the order of ``jobs``.
    """
    experiment = _experiment_from_json(definition)
    with threadpool_limits(limits=n_threads, user_api="blas"):  # BLAS gets the job's share of cores too
        return [run_job(experiment, n, rep, n_threads) for n, rep in jobs]
