"""The one error type of the split-learning core."""

from __future__ import annotations

from schemas.errors import AresError


class SplitError(AresError, ValueError):
    """A bad model spec, cut point or state dict (wrong keys, shapes, dtypes or weights)."""
