"""The strict schema of an experiment definition: every field's type, range and finiteness, in one place.

A definition is checked field by field when it is built (from a TOML/JSON file, a dict or Python), so a
malformed one is refused before anything is written or run, with a :class:`DefinitionError` that names the
field (``fit.max_iter must be an integer in [1, 2147483647], got 2.5``). The rules:

- integers must be integers (``2.7``, ``2.0``, ``"2"`` and ``true`` are not), within a range;
- reals must be finite numbers (not ``inf``, ``nan``, strings or booleans), within a range;
- booleans must be booleans (``"false"`` is a string, and a non-empty string is true in Python);
- texts must be strings, lists must be lists (``sample_sizes = 3000`` is not a list of sample sizes).

Checks that relate fields (``n_experts`` against the truth, ``primary_loss`` among ``losses``) stay with the
classes that hold them; this module holds the per-field rules (:data:`EXPERIMENT`, :data:`X_LAW`,
:data:`FIT`, :data:`TRUTH_PATH`, :data:`PARAMETER_ARRAYS`) and the small checkers they are made of. A checker
returns the value to store: integers become Python ``int``, lists tuples; reals are returned as they came
(an integer written for a real stays one), so the definition, and with it its digest, is what it was.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

import numpy as np

from ..params import GATING_TRANSFORMS, Bounds, MoEParams

__all__ = ["DefinitionError", "EXPERIMENT", "FIT", "MAX_COUNT", "MAX_SAMPLE_SIZE", "MAX_SEED", "PARAMETER_ARRAYS",
           "PARAMETER_INPUTS", "TRUTH_PATH", "X_LAW", "check_fields", "check_parameters", "check_table"]

#: Largest count (experts, replications, iterations, restarts): a C ``int``, far beyond any study.
MAX_COUNT = 2**31 - 1
#: Largest sample size. A sample of this size with two features takes 32 GB; it keeps sizes within the
#: kernels' and the store's integer ranges (``--sample-sizes 1e20`` used to crash the store after its job).
MAX_SAMPLE_SIZE = 2**31 - 1
#: Largest ``base_seed``: a TOML integer (signed 64-bit), so a definition can always be written back.
MAX_SEED = 2**63 - 1


class DefinitionError(ValueError):
    """A definition that the schema refuses; the message names the field."""


def _kind(value) -> str:
    return type(value).__name__


def _got(value, expected) -> str:
    """``repr(value)``, with its type when that is what is wrong (``2.5 (float)``, ``True (bool)``)."""
    wrong_type = isinstance(value, (bool, np.bool_)) or not isinstance(value, expected)
    return f"{value!r} ({_kind(value)})" if wrong_type else repr(value)


@dataclass(frozen=True)
class Integer:
    """An integer in ``[low, high]`` (Python or NumPy integer; not a bool, not a float)."""

    low: int
    high: int = MAX_COUNT

    def __call__(self, name: str, value) -> int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
                or not self.low <= value <= self.high:
            raise DefinitionError(f"{name} must be an integer in [{self.low}, {self.high}], "
                                  f"got {_got(value, numbers.Integral)}")
        return int(value)


@dataclass(frozen=True)
class Real:
    """A finite real number with optional bounds (``low <= x``, ``x < below``, ``x > above``)."""

    low: Optional[float] = None
    above: Optional[float] = None
    below: Optional[float] = None

    def __call__(self, name: str, value):
        ok = (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
              and math.isfinite(value))
        if ok and self.low is not None:
            ok = value >= self.low
        if ok and self.above is not None:
            ok = value > self.above
        if ok and self.below is not None:
            ok = value < self.below
        if not ok:
            raise DefinitionError(f"{name} must be {self.describe()}, got {_got(value, numbers.Real)}")
        return value

    def describe(self) -> str:
        if self.low is not None and self.below is not None:
            return f"a finite number in [{self.low:g}, {self.below:g})"
        bounds = [f">= {self.low:g}" if self.low is not None else None,
                  f"> {self.above:g}" if self.above is not None else None,
                  f"< {self.below:g}" if self.below is not None else None]
        bounds = [b for b in bounds if b]
        return "a finite number" + (" " + " and ".join(bounds) if bounds else "")


@dataclass(frozen=True)
class Boolean:
    """``true`` or ``false`` (not a string, not a number)."""

    def __call__(self, name: str, value) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise DefinitionError(f"{name} must be true or false, got {value!r} ({_kind(value)})")
        return value if isinstance(value, bool) else bool(value)


@dataclass(frozen=True)
class Text:
    """A string, optionally one of ``choices`` or matching ``pattern`` (described as ``what``)."""

    choices: Tuple[str, ...] = ()
    pattern: Optional[str] = None
    what: str = "a string"

    def __call__(self, name: str, value) -> str:
        ok = isinstance(value, str)
        if ok and self.choices:
            ok = value in self.choices
        if ok and self.pattern is not None:
            ok = re.match(self.pattern, value) is not None
        if not ok:
            what = "one of " + ", ".join(repr(c) for c in self.choices) if self.choices else self.what
            raise DefinitionError(f"{name} must be {what}, got {value!r}")
        return value


@dataclass(frozen=True)
class Nullable:
    """``None`` (left out of a file) or a value that ``item`` accepts."""

    item: Any

    def __call__(self, name: str, value):
        return None if value is None else self.item(name, value)


@dataclass(frozen=True)
class List:
    """A list (or tuple) of items that ``item`` accepts, with at least ``min_len`` of them; a tuple back."""

    item: Any
    min_len: int = 0
    unique: bool = False

    def __call__(self, name: str, value) -> tuple:
        if isinstance(value, np.ndarray) and value.ndim == 1:
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise DefinitionError(f"{name} must be a list, got {value!r} ({_kind(value)})")
        if len(value) < self.min_len:
            raise DefinitionError(f"{name} is empty" if self.min_len == 1 else
                                  f"{name} needs at least {self.min_len} items, got {len(value)}")
        items = tuple(self.item(f"{name}[{i}]", v) for i, v in enumerate(value))
        if self.unique and len(set(items)) != len(items):
            raise DefinitionError(f"{name} has duplicates: {list(items)}")
        return items


@dataclass(frozen=True)
class Table:
    """A table (dict) from strings to values that ``value`` accepts; a dict back."""

    value: Any

    def __call__(self, name: str, data) -> dict:
        data = check_table(name, data)
        for key in data:
            if not isinstance(key, str):
                raise DefinitionError(f"{name} keys must be strings, got {key!r}")
        return {key: self.value(f"{name}.{key}", v) for key, v in data.items()}


@dataclass(frozen=True)
class BoxBounds:
    """A box for ``fastmoe.fit(bounds=...)``: one positive finite number, or a table of them keyed by
    :attr:`fastmoe.Bounds.GROUPS` (``gate_slope``, ``gate_intercept``, ``expert_slope``, ``expert_intercept``)."""

    def __call__(self, name: str, value):
        if isinstance(value, Mapping):
            table = check_table(name, value)
            check_keys(name, table, Bounds.GROUPS)
            return {key: Real(above=0)(f"{name}.{key}", limit) for key, limit in table.items()}
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            return Real(above=0)(name, value)
        raise DefinitionError(f"{name} must be a positive number or a table of {list(Bounds.GROUPS)}, "
                              f"got {value!r} ({_kind(value)})")


@dataclass(frozen=True)
class Array:
    """A nested list of finite numbers, ``ndim`` deep (a parameter array as a definition writes it)."""

    ndim: int

    def __call__(self, name: str, value):
        if isinstance(value, np.ndarray):
            value = value.tolist()
        self._check(name, name, value, self.ndim)
        return value

    def _check(self, name, where, value, depth):
        if depth == 0:
            Real()(where, value)
            return
        if not isinstance(value, (list, tuple)):
            holds = "lists of " * (self.ndim - 1) + "numbers"
            raise DefinitionError(f"{where} must be a list, got {_got(value, list)} ({name} holds {holds})")
        for i, v in enumerate(value):
            self._check(name, f"{where}[{i}]", v, depth - 1)


def check_table(name: str, data) -> dict:
    """``data`` as a dict, or a :class:`DefinitionError` saying that ``name`` must be a table."""
    if not isinstance(data, Mapping):
        raise DefinitionError(f"{name} must be a table, got {data!r} ({_kind(data)})")
    return dict(data)


def check_keys(name: str, data: Mapping, known, required=()) -> None:
    """Refuse keys of table ``name`` that are not ``known`` (usually typos) and ``required`` ones that lack."""
    unknown = set(data) - set(known)
    if unknown:
        raise DefinitionError(f"unknown {name} keys {sorted(map(str, unknown))}; expected some of {sorted(known)}")
    missing = [key for key in required if key not in data]
    if missing:
        raise DefinitionError(f"{name} lacks {', '.join(repr(key) for key in missing)}")


def check_parameters(name: str, data, gating: Optional[str] = None, inputs: Optional[Mapping] = None) -> MoEParams:
    """A parameter table (``[truth]``, ``[truth_path.direction]``) as :class:`~fastmoe.MoEParams`.

    ``gating`` given: the table holds the four arrays only and takes that transform and the input columns
    ``inputs`` (:attr:`MoEParams.inputs` of the truth); otherwise it may name one of
    :data:`fastmoe.GATING_TRANSFORMS` under ``gating`` (``"identity"`` when left out) and the columns the
    gating and the experts read (:data:`PARAMETER_INPUTS`; all of X when left out).
    """
    if isinstance(data, MoEParams):
        return data
    data = check_table(name, data)
    known = list(PARAMETER_ARRAYS) + ([] if gating is not None else ["gating", *PARAMETER_INPUTS])
    check_keys(name, data, known, required=list(PARAMETER_ARRAYS))
    for key, rule in PARAMETER_ARRAYS.items():
        rule(f"{name}.{key}", data[key])
    if "gating" in data:
        Text(choices=tuple(GATING_TRANSFORMS))(f"{name}.gating", data["gating"])
    for key, rule in PARAMETER_INPUTS.items():
        if key in data:
            data[key] = rule(f"{name}.{key}", data[key])
    if gating is not None and inputs is not None:
        data.update({key: value for key, value in inputs.items() if value is not None})
    try:
        return MoEParams.from_dict(data, gating=gating)
    except (TypeError, ValueError) as exc:  # shapes that do not fit together
        raise DefinitionError(f"{name}: {exc}") from None


def check_fields(obj, rules: Mapping[str, Any], prefix: str = "") -> dict:
    """Check the attributes of ``obj`` named in ``rules``; return their checked values by name."""
    return {field: rule(prefix + field, getattr(obj, field)) for field, rule in rules.items()}


LOSS_NAMES = List(Text(what="a loss name"), min_len=1)

#: A planned comparison: ``"METRIC < EXPERIMENT"`` (this experiment's slope of METRIC is below, i.e.
#: steeper than, EXPERIMENT's), ``"METRIC > EXPERIMENT"`` or ``"METRIC != EXPERIMENT"`` (two-sided).
PLANNED = re.compile(r"^([A-Za-z0-9_]+) (<|>|!=) ([A-Za-z0-9_.-]+)$")

#: Top-level fields of an experiment (the truth and the tables are checked on their own).
EXPERIMENT = {
    "name": Text(pattern=r"^[A-Za-z0-9_.-]+$", what="letters, digits, '_', '.', '-'"),
    "n_experts": Integer(1),
    "sample_sizes": List(Integer(2, MAX_SAMPLE_SIZE), min_len=1, unique=True),
    "n_replications": Integer(1),
    "base_seed": Integer(0, MAX_SEED),
    "primary_loss": Nullable(Text(what="a loss name")),
    "theory": Table(Real()),
    "exact_translation": Boolean(),
    "coef_limit": Real(above=0),
    "description": Text(),
    "planned": List(Text(pattern=PLANNED.pattern, what="'METRIC < EXPERIMENT', 'METRIC > EXPERIMENT' or "
                                                     "'METRIC != EXPERIMENT'"), unique=True),
}

#: The ``[x_law]`` table (ranges that depend on ``kind`` are checked by :class:`~.options.XLaw`).
X_LAW = {"kind": Text(choices=("uniform", "normal")), "low": Real(), "high": Real(), "scale": Real()}

#: The ``[fit]`` table.
FIT = {
    "init": Text(choices=("truth", "search", "kmeans", "random")),
    "init_scale": Real(low=0),
    "split_cells": Nullable(List(Integer(0))),
    "split_spread": Real(low=0, below=1),
    "n_init": Nullable(Integer(1)),
    "max_iter": Integer(1),
    "tol": Real(above=0),
    "l2": Real(low=0),
    "ridge": Text(choices=("reference", "centred")),
    "bounds": Nullable(BoxBounds()),
    "oracle_check": Boolean(),
}

#: The ``[truth_path]`` table's numbers.
TRUTH_PATH = {"scale": Real(), "exponent": Real(low=0)}

#: The arrays of a parameter table (``[truth]``, ``[truth_path.direction]``), by name.
PARAMETER_ARRAYS = {"beta0": Array(1), "beta1": Array(2), "a": Array(3), "b": Array(2)}
#: The optional input columns of a truth (issue 15): which columns of X the gating and the experts read,
#: and how many X has. Left out, both read all of X.
PARAMETER_INPUTS = {"gating_features": List(Integer(0), min_len=1, unique=True),
                    "expert_features": List(Integer(0), unique=True), "n_inputs": Integer(1)}
