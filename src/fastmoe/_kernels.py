"""Transitional alias: ``fastmoe._kernels`` is the kernel variant chosen by ``_dispatch``.

The compiled kernels are built as ``_kernels_baseline``, ``_kernels_avx2`` and ``_kernels_avx512`` from
``_kernels.pyx`` (see setup.py) and chosen at import by ``fastmoe._dispatch``; new code imports them as
``from ._dispatch import kernels``. This module keeps ``from . import _kernels`` working meanwhile by
replacing itself in ``sys.modules`` with the chosen module.
"""

import sys

from ._dispatch import kernels

sys.modules[__name__] = kernels
