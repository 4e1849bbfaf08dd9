"""The run report as the edge keeps it: rewritten atomically after every round.

The document's models are ``schemas.report``'s; the edge adds to its report as the run goes
(rounds, counters, wall time), so its ``RunReport`` is that model, mutable, with its file I/O.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from schemas import report
from schemas.report import DeviceRoundReport, RoundReport

__all__ = ["DeviceRoundReport", "RoundReport", "RunReport"]


class RunReport(report.RunReport):
    """``schemas.report.RunReport`` that the edge updates in place (assignments validated)."""

    model_config = ConfigDict(frozen=False, validate_assignment=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        """The inverse of ``to_dict`` (a resumed edge carries on its checkpoint's report)."""
        return cls.model_validate(data)

    def write(self, path: Path) -> None:
        """Write atomically (temp file, fsync, rename) so readers never see a torn file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(self.to_dict(), out, indent=2)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
