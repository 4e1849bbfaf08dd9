"""Naming a user's code as ``package.module:attribute`` (models, data loaders)."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def import_callable(path: str, what: str) -> Callable[..., Any]:
    """The callable ``package.module:attribute`` names, or a ValueError of one line saying why
    not (``what``: "model", "dataset", ... opens the line).

    A module that is not installed is also looked for in the working directory, as
    ``python -m`` would (the ``ares`` script does not put it on the path): a model in ``./nets.py``
    is ``nets:make_net``.
    """
    module_name, attribute = path.split(":")
    try:
        module = _import(module_name)
    except Exception as exc:  # the user's module may fail in any way while importing
        raise ValueError(
            f"{what} {path}: cannot import {module_name} ({type(exc).__name__}: {exc}); the "
            "same code must be installed on the edge and on every device"
        ) from None
    found = getattr(module, attribute, None)
    if not callable(found):
        raise ValueError(f"{what} {path}: {module_name} has no callable {attribute!r}")
    return found  # type: ignore[no-any-return]


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        if exc.name != module_name.split(".")[0] or here in sys.path:
            raise
    sys.path.append(here)  # after everything installed: it never shadows an installed module
    return importlib.import_module(module_name)
