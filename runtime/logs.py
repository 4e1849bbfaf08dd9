"""Logging for the services: readable lines for people, or JSON lines for log collectors.

JSON lines (``--log-format json`` or ARES_LOG_FORMAT=json) carry one object per record with
ts (ISO 8601, UTC), level, logger, service (edge or the device id) and message, plus the
exception text when there is one: journald, Loki or Elasticsearch take them as they are.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")
FORMAT_ENV = "ARES_LOG_FORMAT"


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def default_format() -> LogFormat:
    value = os.environ.get(FORMAT_ENV, "text").strip().lower()
    if value not in FORMATS:
        raise ValueError(f"{FORMAT_ENV} must be text or json, not {value!r}")
    return "json" if value == "json" else "text"


def setup_logging(level: str = "INFO", service: str = "", fmt: LogFormat = "text") -> None:
    """Send log records to stderr; called again (e.g. once the device id is known), it replaces."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        prefix = f"{service} " if service else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # paho and aiomqtt are chatty at INFO about things we log ourselves.
    logging.getLogger("aiomqtt").setLevel(logging.WARNING)
