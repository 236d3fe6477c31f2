"""The service's own logs: one JSON object per line, each carrying the request id.

The access middleware sets the request id (from `X-Request-ID` or a fresh one) in a
context variable; a filter copies it into every record logged while that request is
served, including from the engine wrapper and the tools.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

request_id: ContextVar[str | None] = ContextVar("openchat_request_id", default=None)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


def configure(level: str = "INFO") -> None:
    """JSON lines on stderr for the `openchat` logger tree (idempotent)."""
    root = logging.getLogger("openchat")
    if not any(getattr(h, "_openchat", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler._openchat = True
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        ))
        handler.addFilter(RequestIdFilter())
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
