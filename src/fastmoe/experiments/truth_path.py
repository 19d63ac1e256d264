"""Truths that move with the sample size (local alternatives): the ``[truth_path]`` table of a definition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..params import MoEParams
from . import schema

__all__ = ["TruthPath"]


@dataclass(frozen=True, eq=False)
class TruthPath:
    """Truths that move with the sample size: local alternatives.

    The jobs of sample size ``n`` draw their data from, start near and measure their losses against

        truth(n) = truth + scale * n^(-exponent) * direction

    (every array of the parameter moved, in the coordinates the truth is written in). A rate study at a
    fixed truth measures the MLE's pointwise rate; the theory's lower bounds are *minimax*: uniform over a
    neighbourhood of a degenerate truth, attained by truths that approach it as ``n`` grows. A path such
    as :func:`fastmoe.experiments.vanishing.pde_direction` makes that experiment expressible.

    Parameters
    ----------
    direction : MoEParams
        The displacement, shaped like the truth (its gating transform is ignored).
    scale : float, default=1.0
        Size of the displacement at ``n = 1``.
    exponent : float, default=0.0
        The displacement shrinks like ``n^(-exponent)``; ``0`` keeps it fixed.
    """

    direction: MoEParams
    scale: float = 1.0
    exponent: float = 0.0

    def __post_init__(self):
        if not isinstance(self.direction, MoEParams):
            raise TypeError(f"truth_path.direction must be a MoEParams, got {type(self.direction).__name__}")
        schema.check_fields(self, schema.TRUTH_PATH, "truth_path.")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "exponent", float(self.exponent))

    def step(self, n: int) -> float:
        """How far along ``direction`` the truth of sample size ``n`` lies: ``scale * n^(-exponent)``."""
        return self.scale * float(n) ** -self.exponent

    def to_dict(self) -> dict:
        direction = self.direction.to_dict()
        for key in ("gating", *schema.PARAMETER_INPUTS):  # the truth's transform and input columns apply
            direction.pop(key, None)
        return {"scale": self.scale, "exponent": self.exponent, "direction": direction}

    @classmethod
    def from_dict(cls, data: Mapping, gating: str, inputs: Mapping = None) -> "TruthPath":
        """Inverse of :meth:`to_dict`; the direction takes the truth's ``gating`` and input columns
        (``inputs``, the truth's :attr:`~fastmoe.MoEParams.inputs`)."""
        data = schema.check_table("truth_path", data)
        schema.check_keys("truth_path", data, ("direction", "scale", "exponent"), required=("direction",))
        direction = schema.check_parameters("truth_path.direction", data.pop("direction"), gating=gating,
                                            inputs=inputs)
        return cls(direction=direction, **data)
