"""The root of every error this project raises on purpose.

Each package keeps its own error types (they carry data: a reason code, a field, a device), and
every one of them is an ``AresError`` as well as the builtin it refines (``ValueError`` for bad
input, ``RuntimeError`` for a failed operation), so existing ``except ValueError`` handlers keep
working and the CLI turns any ``AresError`` into one clean line instead of a traceback.
"""

from __future__ import annotations


class AresError(Exception):
    """Something this project detected and can explain in one line (``str(error)``)."""
