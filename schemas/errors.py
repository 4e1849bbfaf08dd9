"""The root of every error this project raises on purpose.

Each package keeps its own error types (they carry data: a reason code, a field, a device), and
every one of them is an ``AresError`` as well as the builtin it refines (``ValueError`` for bad
input, ``RuntimeError`` for a failed operation), so existing ``except ValueError`` handlers keep
working and the CLI turns any ``AresError`` into one clean line instead of a traceback.
"""

from __future__ import annotations


class AresError(Exception):
    """Something this project detected and can explain in one line (``str(error)``)."""


class CodecError(AresError, ValueError):
    """A frame could not be encoded or decoded; ``reason`` is a short machine-readable code.

    Here rather than in ``schemas.codec`` so that the codec's formats (``schemas.quantization``)
    raise it without importing the codec."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
