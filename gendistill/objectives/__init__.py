"""Matching objectives behind one registry; each method lives in its own module.

``base`` holds the registry and the protocol types (:class:`Objective`, :class:`StepContext`); ``distribution`` (DM,
M3D's MMD, IDM), ``gradient`` (DC, DSA), ``trajectory`` (MTT, TESLA, DATM) and ``itgan`` register themselves there.
"""

from __future__ import annotations

from . import bptt, cafe, distribution, gradient, itgan, krr, sre2l, trajectory  # noqa: F401  (register dm, mmd, dc, dsa, mtt, tesla,

# datm, itgan, kip, frepo, bptt, ratbptt, cafe, sre2l)
from .base import OBJECTIVES, Objective, RealBatches, StepContext, get_objective, list_objectives, real_count

__all__ = ["OBJECTIVES", "Objective", "RealBatches", "StepContext", "get_objective", "list_objectives", "real_count"]
