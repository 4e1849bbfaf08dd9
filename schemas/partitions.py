"""How an emulated run splits one dataset among its devices: the scheme's text and its parser.

The one parser of ``iid``, ``label_skew`` and ``dirichlet:ALPHA``: the CLI's ``--partition``,
the device's and the scenario's ``partition`` setting and :func:`splitnn.datasets.partition_indices`
all read partitions through :func:`parse_partition`. It lives here, with no numpy or torch, so
settings and scenario files validate without loading either; the algorithms are in
:mod:`splitnn.datasets.partitions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from schemas.errors import AresError

PartitionKind = Literal["iid", "label_skew", "dirichlet"]
PARTITION_HELP = "iid, label_skew or dirichlet:ALPHA (ALPHA > 0; smaller is more skewed, e.g. 0.3)"
_WITHOUT_PARAMETER: dict[str, PartitionKind] = {"iid": "iid", "label_skew": "label_skew"}


class PartitionError(AresError, ValueError):
    """A partition scheme's text that does not parse."""


@dataclass(frozen=True)
class PartitionScheme:
    """A parsed scheme; ``str()`` gives its canonical text (what settings store)."""

    kind: PartitionKind
    alpha: float | None = None  # the Dirichlet concentration; None for the other kinds

    def __post_init__(self) -> None:
        if (self.kind == "dirichlet") != (self.alpha is not None):
            raise PartitionError(f"only dirichlet takes a concentration, got {self!r}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise PartitionError(f"dirichlet:ALPHA needs a finite ALPHA > 0, got {self.alpha!r}")

    def __str__(self) -> str:
        if self.alpha is None:
            return self.kind
        short = format(self.alpha, "g")  # 0.3, 100, 1e-05; repr only where "g" would round
        return f"dirichlet:{short if float(short) == self.alpha else repr(self.alpha)}"


def parse_partition(text: str | PartitionScheme) -> PartitionScheme:
    """``"iid"``, ``"label_skew"`` or ``"dirichlet:ALPHA"`` as a scheme, else PartitionError."""
    if isinstance(text, PartitionScheme):
        return text
    if not isinstance(text, str):
        raise PartitionError(f"a partition is text ({PARTITION_HELP}), got {text!r}")
    kind, sep, parameter = text.strip().partition(":")
    kind = kind.strip().lower()
    simple = _WITHOUT_PARAMETER.get(kind)
    if simple is not None:
        if sep:
            raise PartitionError(f"partition {text!r}: {kind} takes no parameter")
        return PartitionScheme(simple)
    if kind == "dirichlet":
        if not parameter.strip():
            raise PartitionError(
                f"partition {text!r}: dirichlet needs a concentration, e.g. dirichlet:0.3"
            )
        try:
            alpha = float(parameter)
        except ValueError:
            raise PartitionError(
                f"partition {text!r}: the concentration {parameter.strip()!r} is not a number"
            ) from None
        if not (math.isfinite(alpha) and alpha > 0):
            raise PartitionError(f"partition {text!r}: the concentration must be finite and > 0")
        return PartitionScheme("dirichlet", alpha)
    raise PartitionError(f"unknown partition {text!r}; choose {PARTITION_HELP}")


def check_partition(text: str) -> str:
    """The canonical text of a scheme (for settings validators), else PartitionError."""
    return str(parse_partition(text))
