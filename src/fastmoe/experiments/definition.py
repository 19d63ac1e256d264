"""An experiment as data: the :class:`Experiment` definition, its checks, grid, file forms and digest.

An experiment (``MODEL.md`` section 5) fixes a true parameter ``G*``, a fitted number of experts, the law of
``X``, a grid of sample sizes and a number of replications. A *job* is one ``(n, replication)`` cell of that
grid; its random streams derive from ``(base_seed, n, replication)`` alone (:mod:`~fastmoe.experiments.seeds`).
The parts of a definition live beside it: the law of ``X`` and the fit options in
:mod:`~fastmoe.experiments.options`, a truth that moves with ``n`` in :mod:`~fastmoe.experiments.truth_path`,
the loss names in :mod:`~fastmoe.experiments.scoring`.

A definition round-trips through a dict, TOML and JSON::

    exp = Experiment.load("my-study.toml")
    exp.save("copy.json")
    assert Experiment.load("copy.json") == exp
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional, Tuple

from ..params import MoEParams
from . import _toml, schema
from ._atomic import atomic_open
from .options import FitOptions, XLaw
from .scoring import parse_loss
from .seeds import job_streams
from .truth_path import TruthPath
from .vanishing import along, check_split_spread, vanishing_experts

__all__ = ["Experiment", "NOT_IN_DIGEST"]

#: The fields of a definition that change no job's numbers, left out of :meth:`Experiment.model_digest`:
#: the grid (a store may extend it), the description and the planned comparisons.
NOT_IN_DIGEST = ("sample_sizes", "n_replications", "description", "planned")


@dataclass(frozen=True, eq=False)
class Experiment:
    """A rate experiment: true parameter, fitted model, grid of sample sizes and replications.

    Parameters
    ----------
    name : str
        Identifier; the result store keys rows by ``(name, n, replication)``.
    truth : MoEParams
        The true parameter ``G*``, with a named gating transform. The fit uses the same transform: the
        Voronoi losses compare gating parameters of one transform only.
    n_experts : int
        Number of fitted experts ``k`` (``k = k*`` exact fit, ``k > k*`` over-fit).
    sample_sizes : tuple of int
        The grid of ``n`` (sorted on construction).
    n_replications : int
        Replications per sample size.
    base_seed : int, default=0
        Entropy shared by all jobs; see :func:`~fastmoe.experiments.seeds.job_seed`.
    x_law : XLaw, default=XLaw()
        Law of ``X`` (``Uniform[-1, 1]^d``).
    fit : FitOptions, default=FitOptions()
        Initialisation and EM options.
    losses : tuple of str, default=("D1",)
        Voronoi losses recorded per job (names as in :mod:`~fastmoe.experiments.scoring`); per-parameter
        errors are always recorded.
    primary_loss : str or None, default=None
        The loss whose slope the command line prints first; the first of ``losses`` when None.
    theory : mapping of str to float, default={}
        Theoretical slope of log(metric) on log(n), keyed by metric name or :mod:`fnmatch` pattern
        (``"beta1_max_*"``); the first matching key wins. Drawn beside the fitted lines.
    exact_translation : bool, default=False
        Compute the losses with the numerical infimum over gating translations.
    coef_limit : float, default=50.0
        A fitted coefficient larger than this in absolute value marks the fit as diverged
        (quasi-separation), in addition to :attr:`fastmoe.FitResult.diverged`.
    description : str, default=""
        Free text shown by ``fastmoe rates presets``.
    truth_path : TruthPath or None, default=None
        Truths that move with ``n`` (:meth:`truth_at`); ``truth`` is then the start of the path. Stored in
        the definition only when set.
    planned : tuple of str, default=()
        Comparisons of slopes with other experiments that this one is run to make, declared before it
        runs: ``"a_mean_1 < vanishing-standard"`` (this experiment's slope of ``a_mean_1`` is below,
        i.e. steeper than, ``vanishing-standard``'s), ``">"``, or ``"!="`` for a two-sided question.
        ``fastmoe rates compare`` tests a planned comparison on its own, one-sided where a direction is
        declared, and corrects the unplanned rest for multiplicity (Holm). Not part of
        :meth:`model_digest`: a plan changes no job's numbers.
    """

    name: str
    truth: MoEParams
    n_experts: int
    sample_sizes: Tuple[int, ...]
    n_replications: int
    base_seed: int = 0
    x_law: XLaw = field(default_factory=XLaw)
    fit: FitOptions = field(default_factory=FitOptions)
    losses: Tuple[str, ...] = ("D1",)
    primary_loss: Optional[str] = None
    theory: Mapping[str, float] = field(default_factory=dict)
    exact_translation: bool = False
    coef_limit: float = 50.0
    description: str = ""
    truth_path: Optional[TruthPath] = None
    planned: Tuple[str, ...] = ()

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        if not isinstance(self.truth, MoEParams):
            raise TypeError(f"truth must be a MoEParams, got {type(self.truth).__name__}")
        if not isinstance(self.truth.gating, str):
            raise schema.DefinitionError("the true parameter needs a named gating transform so it can be stored")
        for name, kind in (("x_law", XLaw), ("fit", FitOptions)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        # Per-field types and ranges first (schema), so that the checks between fields below compare numbers.
        for name, value in schema.check_fields(self, schema.EXPERIMENT).items():
            set_(name, value)
        set_("sample_sizes", tuple(sorted(self.sample_sizes)))
        set_("theory", {k: float(v) for k, v in self.theory.items()})
        losses = schema.LOSS_NAMES("losses", (self.losses,) if isinstance(self.losses, str) else self.losses)
        for i, name in enumerate(losses):
            try:
                parse_loss(name)
            except ValueError as exc:
                raise schema.DefinitionError(f"losses[{i}]: {exc}") from None
        set_("losses", losses)
        if (self.fit.init == "truth" or self.fit.oracle_check) and self.n_experts < self.truth.n_experts:
            raise schema.DefinitionError(
                f"a start near the truth (fit.init = 'truth' or fit.oracle_check) needs n_experts >= the true number of experts "
                f"({self.truth.n_experts}), got {self.n_experts}"
            )
        if self.fit.split_cells is not None:
            extra = self.n_experts - self.truth.n_experts
            if len(self.fit.split_cells) != extra:
                raise schema.DefinitionError(
                    f"fit.split_cells names {len(self.fit.split_cells)} cells but the fit has {extra} extra "
                    f"experts (n_experts={self.n_experts}, true experts={self.truth.n_experts})"
                )
            bad = [j for j in self.fit.split_cells if not 0 <= j < self.truth.n_experts]
            if bad:
                raise schema.DefinitionError(
                    f"fit.split_cells {bad} are not true atoms 0..{self.truth.n_experts - 1}")
        if self.truth_path is not None:
            self._check_truth_path()
        if self.fit.split_spread > 0:
            true = self.truth.normalized()
            vanishing = vanishing_experts(true)
            if not vanishing.size:
                raise schema.DefinitionError("fit.split_spread only moves split cells of vanishing true "
                                             "experts (a*_j = 0), and the truth has none")
            for j in vanishing:
                check_split_spread(true.b[j], self.fit.split_spread)
        for entry in self.planned:
            if schema.PLANNED.match(entry).group(3) == self.name:
                raise schema.DefinitionError(f"planned {entry!r} compares the experiment with itself")
        primary = self.primary_loss if self.primary_loss is not None else losses[0]
        if primary not in losses:
            raise schema.DefinitionError(f"primary_loss {primary!r} is not among losses {losses}")
        set_("primary_loss", primary)

    def _check_truth_path(self) -> None:
        if not isinstance(self.truth_path, TruthPath):
            raise TypeError(f"truth_path must be a TruthPath, got {type(self.truth_path).__name__}")
        direction, truth = self.truth_path.direction, self.truth
        for name in ("beta0", "beta1", "a", "b"):
            if getattr(direction, name).shape != getattr(truth, name).shape:
                raise schema.DefinitionError(
                    f"truth_path.direction.{name} has shape {getattr(direction, name).shape}, "
                    f"the truth's {name} {getattr(truth, name).shape}")
        if direction.inputs != truth.inputs:
            raise schema.DefinitionError(
                f"truth_path.direction reads the columns {direction.inputs}, the truth {truth.inputs}")
        if self.fit.split_spread > 0:
            raise schema.DefinitionError("fit.split_spread places split cells of a fixed vanishing truth; it "
                                         "does not combine with truth_path")

    def outline(self) -> str:
        """One line on the model: true and fitted numbers of experts, gating, sizes, and the truth's path."""
        truth = self.truth
        line = (f"k*={truth.n_experts}, k={self.n_experts}, gating={truth.gating_name}, d={truth.n_features}, "
                f"K={truth.n_classes}")
        if truth.separate_inputs:
            line += (f" (gating on columns {list(truth.gating_columns())}, experts on {list(truth.expert_columns())}"
                     f" of {truth.n_inputs})")
        path = self.truth_path
        if path is not None and path.exponent > 0:
            line += f", truth moves by t = {path.scale:.4g} n^-{path.exponent:g} along a path"
        elif path is not None:
            line += f", truth at t = {path.scale:.4g} along a path"
        return line

    def truth_at(self, n: int) -> MoEParams:
        """The true parameter of the jobs with sample size ``n`` (``truth`` unless a path is set)."""
        if self.truth_path is None:
            return self.truth
        return along(self.truth, self.truth_path.direction, self.truth_path.step(n))

    # -- grid ---------------------------------------------------------------------------------------
    @property
    def n_jobs(self) -> int:
        """Number of jobs in the grid."""
        return len(self.sample_sizes) * self.n_replications

    def jobs(self) -> Iterator[Tuple[int, int]]:
        """All ``(n, replication)`` pairs of the grid."""
        for n in self.sample_sizes:
            for rep in range(self.n_replications):
                yield n, rep

    def streams(self, n: int, replication: int) -> dict:
        """The random generators of one job (:func:`~fastmoe.experiments.seeds.job_streams`)."""
        return job_streams(self.base_seed, n, replication)

    def with_grid(self, sample_sizes=None, n_replications=None) -> "Experiment":
        """A copy with another grid; the jobs the two grids share give identical results."""
        changes = {}
        if sample_sizes is not None:
            changes["sample_sizes"] = sample_sizes
        if n_replications is not None:
            changes["n_replications"] = n_replications
        return dataclasses.replace(self, **changes)

    # -- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain-Python form (JSON/TOML ready)."""
        fit = dataclasses.asdict(self.fit)
        if fit["split_cells"] is not None:
            fit["split_cells"] = list(fit["split_cells"])
        # Fields added after definitions were first stored are left out at their defaults, so the digests of
        # earlier definitions (and with them the stores that hold their rows) stay as they were.
        if fit["split_spread"] == 0.0:
            del fit["split_spread"]
        if fit["n_init"] is None:  # only with init = "search": fastmoe.fit's default number of starts
            del fit["n_init"]
        if not fit["oracle_check"]:
            del fit["oracle_check"]
        if fit["bounds"] is None:
            del fit["bounds"]
        if fit["ridge"] == "reference" or fit["l2"] == 0.0:  # without a ridge its form changes no fit
            del fit["ridge"]
        return {
            "name": self.name,
            "description": self.description,
            "n_experts": self.n_experts,
            "sample_sizes": list(self.sample_sizes),
            "n_replications": self.n_replications,
            "base_seed": self.base_seed,
            "losses": list(self.losses),
            "primary_loss": self.primary_loss,
            "exact_translation": self.exact_translation,
            "coef_limit": self.coef_limit,
            "theory": dict(self.theory),
            "x_law": dataclasses.asdict(self.x_law),
            "fit": fit,
            "truth": self.truth.to_dict(),
            **({"truth_path": self.truth_path.to_dict()} if self.truth_path is not None else {}),
            **({"planned": list(self.planned)} if self.planned else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "Experiment":
        """Inverse of :meth:`to_dict`; unknown keys are an error (they are usually typos), and every field
        is checked against :mod:`~fastmoe.experiments.schema`."""
        data = schema.check_table("experiment", data)
        schema.check_keys("experiment", data, [f.name for f in dataclasses.fields(cls)],
                          required=("name", "truth", "n_experts", "sample_sizes", "n_replications"))
        data["truth"] = schema.check_parameters("truth", data["truth"])
        if data.get("truth_path") is not None and not isinstance(data["truth_path"], TruthPath):
            data["truth_path"] = TruthPath.from_dict(data["truth_path"], gating=data["truth"].gating,
                                                     inputs=data["truth"].inputs)
        for key, sub in (("x_law", XLaw), ("fit", FitOptions)):
            if key in data and not isinstance(data[key], sub):
                table = schema.check_table(key, data[key])
                schema.check_keys(key, table, [f.name for f in dataclasses.fields(sub)])
                data[key] = sub(**table)
        return cls(**data)

    def to_toml(self) -> str:
        """The definition as TOML text."""
        return _toml.dumps(self.to_dict())

    def to_json(self) -> str:
        """The definition as JSON text."""
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path) -> None:
        """Write to ``path``: TOML for a ``.toml`` suffix, JSON otherwise."""
        path = Path(path)
        with atomic_open(path, "w") as fh:  # a killed run leaves the old definition or the new one
            fh.write(self.to_toml() if path.suffix == ".toml" else self.to_json())

    @classmethod
    def load(cls, path) -> "Experiment":
        """Read a TOML (``.toml``) or JSON definition."""
        path = Path(path)
        text = path.read_text()
        try:
            data = _toml.loads(text) if path.suffix == ".toml" else json.loads(text)
        except ValueError as exc:  # TOMLDecodeError and JSONDecodeError: say which file
            raise ValueError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from None
        return cls.from_dict(data)

    def model_digest(self) -> str:
        """Hash of everything that determines a job's numbers (all but the grid and the description).

        Two definitions with the same digest give the same result for every job they share, so a store
        may extend a grid but refuses to mix rows of different digests under one name.
        """
        data = self.to_dict()
        for key in NOT_IN_DIGEST:
            data.pop(key, None)
        canonical = json.dumps(data, sort_keys=True, default=float)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def planned_against(self, other: str):
        """The planned comparisons with experiment ``other``: ``[(metric, alternative)]``, the alternative
        being about ``slope(other) - slope(self)``: ``"greater"`` for ``"METRIC < other"``, ``"less"``
        for ``">"``, ``"two-sided"`` for ``"!="``."""
        side = {"<": "greater", ">": "less", "!=": "two-sided"}
        out = []
        for entry in self.planned:
            metric, op, name = schema.PLANNED.match(entry).groups()
            if name == other:
                out.append((metric, side[op]))
        return out

    def theory_slope(self, metric: str) -> float:
        """Theoretical slope of ``metric`` from :attr:`theory` (NaN when no key matches)."""
        from fnmatch import fnmatchcase

        for pattern, slope in self.theory.items():
            if fnmatchcase(metric, pattern):
                return slope
        return math.nan

    def __eq__(self, other) -> bool:
        if not isinstance(other, Experiment):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # mutable-looking contents (dict, arrays): not hashable
