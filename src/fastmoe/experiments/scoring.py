"""What a job measures: the one registry of loss names, and the scores of a fitted parameter.

A definition names the Voronoi losses its jobs record as text. This module is the only place that knows
those names: which exist, how one is parsed (:func:`parse_loss`) and which function of
:mod:`fastmoe.losses` computes it (:meth:`Loss.__call__`). :func:`score` turns one fitted parameter into
the loss and per-parameter error columns of a job record.

- ``"D1"``: :func:`fastmoe.losses.D1` (every exponent 1);
- ``"D2"``: :func:`fastmoe.losses.D2` (exponent 2 in split cells);
- ``"D2r<r>"`` (``"D2r4"``, ``"D2r1.5"``): :func:`fastmoe.losses.D2r` with exponent ``r`` in split cells;
- ``"D2q"``, ``"D2q<r>"`` (``"D2q4"``): :func:`fastmoe.losses.D2q`, D2 (exponent 2, or ``r``) with the
  intercepts of split vanishing cells' atoms replaced by the cells' pooled intercepts (issue 14).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

from .. import losses as voronoi

__all__ = ["Loss", "parse_loss", "score"]

_LOSS_NAME = re.compile(r"^(D1|D2|D2r(?P<r>\d+(\.\d+)?)|D2q(?P<rq>\d+(\.\d+)?)?)$")


@dataclass(frozen=True)
class Loss:
    """A loss named in a definition: the function of :mod:`fastmoe.losses` and its exponent.

    Attributes
    ----------
    name : str
        As written in the definition (``"D2r1.5"``); the key of its column in a job record.
    function : {"D1", "D2", "D2r", "D2q"}
        The function of :mod:`fastmoe.losses` that computes it.
    r : float or None
        The split-cell exponent of ``D2r`` and ``D2q<r>``; None for ``D1``, ``D2`` and ``D2q`` (which uses
        D2's default, 2).
    """

    name: str
    function: str
    r: Optional[float] = None

    def __call__(self, fitted, truth, exact_translation: bool = False) -> float:
        """The loss of ``fitted`` against ``truth``."""
        if self.function == "D1":
            value = voronoi.D1(fitted, truth, exact_translation=exact_translation)
        elif self.function == "D2":
            value = voronoi.D2(fitted, truth, exact_translation=exact_translation)
        elif self.function == "D2q":
            r = {} if self.r is None else {"r": self.r}
            value = voronoi.D2q(fitted, truth, exact_translation=exact_translation, **r)
        else:
            value = voronoi.D2r(fitted, truth, self.r, exact_translation=exact_translation)
        return float(value)


def parse_loss(name: str) -> Loss:
    """The loss called ``name``; a :class:`ValueError` names the accepted forms when there is none.

    ``"D1"`` and ``"D2"`` name :func:`fastmoe.losses.D1` and :func:`fastmoe.losses.D2` (``r = 2``);
    ``"D2r<r>"`` (e.g. ``"D2r4"``, ``"D2r1.5"``) names :func:`fastmoe.losses.D2r` with exponent ``r``;
    ``"D2q"`` and ``"D2q<r>"`` name :func:`fastmoe.losses.D2q` with exponent 2 or ``r``.
    """
    match = _LOSS_NAME.match(name)
    if not match:
        raise ValueError(f"unknown loss {name!r}; expected 'D1', 'D2', 'D2r<r>' such as 'D2r4', "
                         "or 'D2q' or 'D2q<r>' such as 'D2q4'")
    if match.group("r") is not None:
        return Loss(name, "D2r", float(match.group("r")))
    if match.group("rq") is not None:
        return Loss(name, "D2q", float(match.group("rq")))
    if name.startswith("D2q"):
        return Loss(name, "D2q")
    return Loss(name, name)


def score(fitted, truth, loss_names: Iterable[str], exact_translation: bool = False) -> dict:
    """The columns of a job record that measure ``fitted`` against ``truth``.

    Returns
    -------
    dict of str to float
        Every named loss, then the per-parameter errors of every true atom
        (:func:`fastmoe.losses.per_parameter_errors` flattened by :func:`fastmoe.losses.flat`).
    """
    out = {name: parse_loss(name)(fitted, truth, exact_translation) for name in loss_names}
    out.update(voronoi.flat(voronoi.per_parameter_errors(fitted, truth, exact_translation=exact_translation)))
    return out
