"""Flag value types the commands share (argparse reports a bad value with the flag's name)."""

from __future__ import annotations

import argparse

from schemas.messages import WIRE_DTYPES
from schemas.partitions import PartitionError, check_partition

__all__ = ["partition_arg", "positions_arg", "shape_arg", "wire_formats_arg"]


def shape_arg(text: str) -> tuple[int, ...]:
    """``--input-shape``: 3x32x32 (or 3,32,32) -> (3, 32, 32)."""
    try:
        shape = tuple(int(n) for n in text.replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes such as 3x32x32, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return shape


def partition_arg(text: str) -> str:
    """``--partition``'s value in its canonical text (argparse reports a bad one)."""
    try:
        return check_partition(text)
    except PartitionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positions_arg(text: str) -> list[int]:
    """``--exits``: 2,4 -> [2, 4] (the settings check each is a block boundary)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positions such as 2,4, got {text!r}") from None


def wire_formats_arg(text: str) -> list[str]:
    """``--wire-formats``: float32,int8 -> ["float32", "int8"]; "" -> [] (no choice)."""
    formats = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [f for f in formats if f not in WIRE_DTYPES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown wire formats {unknown}: choose from {', '.join(WIRE_DTYPES)}"
        )
    return formats
