"""Parameter-estimation rate experiments (``MODEL.md`` section 5): definitions, runs, stores, reports.

One concern per module:

- :mod:`~fastmoe.experiments.definition`: an experiment as data (:class:`Experiment`): its checks, grid,
  TOML/JSON forms and the digest that keys its stored rows;
- :mod:`~fastmoe.experiments.schema`: the strict rules of every field of a definition (types, ranges,
  finiteness), checked before anything is written or run;
- :mod:`~fastmoe.experiments.options`: how a job draws ``X`` and fits (:class:`XLaw`, :class:`FitOptions`);
- :mod:`~fastmoe.experiments.truth_path`: truths that move with ``n`` (:class:`TruthPath`);
- :mod:`~fastmoe.experiments.seeds`: per-job random streams from ``(base_seed, n, replication)``;
- :mod:`~fastmoe.experiments.scoring`: the registry of loss names and the scores of one fit;
- :mod:`~fastmoe.experiments.starts`: starts near the truth (split, duplicate, perturb);
- :mod:`~fastmoe.experiments.vanishing`: split cells of vanishing experts (their non-identifiable
  intercepts, standard gating's PDE direction), for starts and for truths that move with ``n``;
- :mod:`~fastmoe.experiments.presets`: the shipped definitions (TOML files: the paper's four settings and
  their variants; ``fastmoe rates presets`` lists them);
- :mod:`~fastmoe.experiments.job`: one job on a worker (sample, fit, score, record);
- :mod:`~fastmoe.experiments.runner`: the grid on local processes or a Dask cluster;
- :mod:`~fastmoe.experiments.store`: the SQLite result store (resume, export) and archived runs (CSV);
- :mod:`~fastmoe.experiments.analysis` and :mod:`~fastmoe.experiments.plots`: slopes, slope differences between
  experiments, tables, figures;
- :mod:`~fastmoe.experiments.family`: truth families (random truths of a preset's shape, per ``d``);
- :mod:`~fastmoe.experiments.paper`: the paper's reproduction (``paper.toml``): run every study, write
  ``docs/results.md`` from the committed archives;
- :mod:`~fastmoe.experiments.cli`: ``fastmoe rates run | report | compare | paper | presets``;
- :mod:`~fastmoe.experiments._toml`: the TOML subset definitions are written in;
- :mod:`~fastmoe.experiments._atomic`: atomic file output (a temporary file beside the target, then a rename).

Plotting needs matplotlib, the progress bar tqdm, a cluster dask.distributed (the ``experiments`` extra).
"""

from .analysis import STATISTICS, Report, SlopeDifference, SlopeFit, analyse, compare_slopes, fit_slope, holm, summarize
from .definition import Experiment
from .job import run_job
from .options import FitOptions, XLaw
from .presets import get_preset, load_experiment, preset_names
from .runner import RunSummary, run_experiment
from .seeds import job_seed
from .starts import init_near_truth
from .store import ResultStore
from .truth_path import TruthPath

__all__ = [
    "STATISTICS",
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
    "holm",
    "init_near_truth",
    "job_seed",
    "load_experiment",
    "preset_names",
    "run_experiment",
    "run_job",
    "summarize",
]
