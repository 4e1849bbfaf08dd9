"""YAML and JSON documents (scenarios, plan files): read, parse, and every problem in one line.

Scenario files, plan files and config files are all written by people; whichever command reads
one, a mistake in it reads the same: the file, then where and what, on one line (no PyYAML
context drawing, no pydantic links).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from schemas.errors import AresError


class DocumentError(AresError, ValueError):
    """A document that cannot be read, parsed or validated; the message is one line."""


def read_document(source: Path | Traversable, label: str) -> Any:
    """The parsed document: JSON for a ``.json`` name, else YAML. ``label`` names it in errors."""
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{label}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise DocumentError(f"{label}: {exc.strerror or exc}") from None
    if source.name.lower().endswith(".json"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise DocumentError(f"{label}: not valid JSON: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DocumentError(f"{label}: not valid YAML: {yaml_problem(exc)}") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's context lines and caret drawing."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return " ".join(str(exc).split())


def error_text(error: ErrorDetails, whole: str = "(document)") -> str:
    """One validation error as ``where.it.is: what is wrong (got VALUE)``; ``whole`` names an
    error of the whole document. Tables and passwords are not echoed."""
    name = ".".join(str(part) for part in error["loc"]) or whole
    given = error.get("input")
    shown = "" if isinstance(given, Mapping) or "password" in name else f" (got {given!r})"
    return f"{name}: {error['msg']}{shown}"


def validation_problems(exc: ValidationError) -> str:
    """Every error of a validation, one line."""
    return "; ".join(error_text(error) for error in exc.errors())
