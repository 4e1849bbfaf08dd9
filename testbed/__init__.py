"""The emulated testbed: heterogeneous devices, shaped links and batteries on one machine."""

from testbed.battery import EmulatedBattery
from testbed.links import (
    EmulatedLink,
    LinkLab,
    LinkLabError,
    LinkSupport,
    NetemUnavailableError,
    cleanup_stale,
    link_mode,
)
from testbed.profiles import (
    PROFILE_NAMES,
    ComputePacer,
    EmulationProfile,
    PaceResult,
    get_profile,
    pad,
)
from testbed.schedule import RateSchedule, ScheduleError, parse_schedule

__all__ = [
    "PROFILE_NAMES",
    "ComputePacer",
    "EmulatedBattery",
    "EmulatedLink",
    "EmulationProfile",
    "LinkLab",
    "LinkLabError",
    "LinkSupport",
    "NetemUnavailableError",
    "PaceResult",
    "RateSchedule",
    "ScheduleError",
    "cleanup_stale",
    "get_profile",
    "link_mode",
    "pad",
    "parse_schedule",
]
