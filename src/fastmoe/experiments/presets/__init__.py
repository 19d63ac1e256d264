"""Named experiment definitions shipped with fastmoe (the TOML files in this folder).

The four settings of ``MODEL.md`` section 5 (Nguyen, Akbarian, Nguyen & Ho, ICML 2024), all with
``d = 2`` inputs, ``K = 3`` classes and ``k* = 2`` true experts: ``exact-fit`` and ``over-fit`` on the paper's
``Uniform[-1, 1]^2``, the ``vanishing-*`` presets on ``Uniform[-3, 3]^2`` (on ``[-1, 1]`` tanh and sigmoid are
nearly linear, so modified and standard gating can hardly differ there); ``vanishing-*-spread`` start the
split vanishing cell off the centre of its non-identifiable set, ``vanishing-*-local`` move the truth
towards that degenerate point as ``n`` grows (``truth_path``); ``over-fit-bounded`` is ``over-fit`` maximised
over a box on the free parameters (``fit.bounds``, the compact parameter space of the theory) instead of with
a ridge. ``separate-inputs`` is the exact-fit setting with the gating on one column of a 3-column ``X`` and
the experts on the two others (issue 15). Each file says why its true parameter was chosen.
``over-fit-bounded-search`` is ``over-fit-bounded`` fitted by the data-driven search, with its start as the
oracle check. ``fastmoe rates presets`` lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from ..definition import Experiment

__all__ = ["PRESET_DIR", "preset_names", "get_preset", "load_experiment"]

#: Folder holding the preset files.
PRESET_DIR = Path(__file__).resolve().parent


def preset_names() -> List[str]:
    """Names of the shipped presets (file stems), sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def get_preset(name: str) -> Experiment:
    """The preset called ``name``."""
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise KeyError(f"no preset {name!r}; available: {', '.join(preset_names())}")
    return Experiment.load(path)


def all_presets() -> Dict[str, Experiment]:
    """Every shipped preset by name."""
    return {name: get_preset(name) for name in preset_names()}


def load_experiment(spec) -> Experiment:
    """An experiment from a preset name or a definition file (``.toml`` or ``.json``)."""
    path = Path(spec)
    if path.is_file():
        return Experiment.load(path)
    if str(spec) in preset_names():
        return get_preset(str(spec))
    raise ValueError(
        f"{spec!r} is neither a definition file nor a preset; presets: {', '.join(preset_names())}"
    )
