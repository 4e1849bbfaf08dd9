"""Tests of benchmarks/: the scripts' quick runs, and their pure parts imported directly."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py, a script rather than part of a package (it imports its neighbours,
    such as benchutil, as top-level modules: the folder goes on sys.path for good)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    return importlib.import_module(name)
