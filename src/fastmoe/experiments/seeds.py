"""Per-job random streams: a job's seeds derive from ``(base_seed, n, replication)`` alone.

A *job* is one ``(n, replication)`` cell of an experiment's grid. Its random streams derive from
``numpy.random.SeedSequence([base_seed, n, replication])``, so any single job can be re-run on its own, on any
machine, in any order, and gives the same numbers; growing the grid later leaves the old jobs as they were.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STREAMS", "job_seed", "job_streams"]

#: Names of the random streams of one job, in the order they are spawned from its seed sequence.
STREAMS = ("x", "y", "init", "fit")


def job_seed(base_seed: int, n: int, replication: int) -> np.random.SeedSequence:
    """The seed sequence of job ``(n, replication)``: entropy ``(base_seed, n, replication)``."""
    return np.random.SeedSequence([int(base_seed), int(n), int(replication)])


def job_streams(base_seed: int, n: int, replication: int) -> dict:
    """Independent generators ``{"x", "y", "init", "fit"}`` of one job (see :data:`STREAMS`)."""
    children = job_seed(base_seed, n, replication).spawn(len(STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(STREAMS, children)}
