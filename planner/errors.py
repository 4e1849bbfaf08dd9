"""The planner's single error type."""

from __future__ import annotations

from schemas.errors import AresError


class PlanningError(AresError, ValueError):
    """Raised for inputs the planner cannot work with.

    ``field`` names the offending input (a dataclass field, a function argument or a device id) so
    that a caller parsing profiles from telemetry can point at the bad value without parsing text.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
