"""Parameter-estimation rate experiments (``MODEL.md`` section 5).

Layers, each in a small module:

- :mod:`~fastmoe.experiments.config`: an experiment as data (:class:`Experiment`), TOML/JSON round trip,
  per-job seeds derived from ``(base_seed, n, replication)``, truths that move with ``n`` (:class:`TruthPath`);
- :mod:`~fastmoe.experiments.presets`: the paper's four settings as shipped TOML files;
- :mod:`~fastmoe.experiments.starts`: starts near the truth (split, duplicate, perturb);
- :mod:`~fastmoe.experiments.vanishing`: split cells of vanishing experts (their non-identifiable
  intercepts, standard gating's PDE direction), for starts and for truths that move with ``n``;
- :mod:`~fastmoe.experiments.job`: one job on a worker (sample, fit, losses, record);
- :mod:`~fastmoe.experiments.runner`: the grid on local processes or a Dask cluster;
- :mod:`~fastmoe.experiments.store`: the SQLite result store (resume, export);
- :mod:`~fastmoe.experiments.analysis` and :mod:`~fastmoe.experiments.plots`: slopes, slope differences between
  experiments, tables, figures;
- :mod:`~fastmoe.experiments.cli`: ``fastmoe rates run | report | compare | presets``.

Plotting needs matplotlib, the progress bar tqdm, a cluster dask.distributed (the ``experiments`` extra).
"""

from .analysis import Report, SlopeDifference, SlopeFit, analyse, compare_slopes, fit_slope
from .config import Experiment, FitOptions, TruthPath, XLaw, job_seed
from .starts import init_near_truth
from .job import run_job
from .presets import get_preset, load_experiment, preset_names
from .runner import RunSummary, run_experiment
from .store import ResultStore

__all__ = [
    "Experiment",
    "FitOptions",
    "Report",
    "ResultStore",
    "RunSummary",
    "SlopeDifference",
    "SlopeFit",
    "TruthPath",
    "XLaw",
    "analyse",
    "compare_slopes",
    "fit_slope",
    "get_preset",
    "init_near_truth",
    "job_seed",
    "load_experiment",
    "preset_names",
    "run_experiment",
    "run_job",
]
