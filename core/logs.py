"""Logs of every Improbable process: one handler on the root logger, plain text or one JSON object per
line (IMPROBABLE_LOG_FORMAT=json), at IMPROBABLE_LOG_LEVEL.

Celery is not imported here: the worker tells this module how to find the running task
(`set_task_context`, from worker/signals.py), so JSON lines written inside a task carry its id and name.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from core.settings import Settings, get_settings

_service: str | None = None
# attributes every LogRecord has; anything else on a record came from `extra=` and goes into the JSON
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime",
                                                                                  "taskName"}
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

TaskContext = Callable[[], tuple[str | None, str | None]]
_task_context: TaskContext | None = None


def set_task_context(context: TaskContext | None) -> None:
    """`context()` → (task id, task name) of the job running in this thread, or (None, None)."""
    global _task_context
    _task_context = context


def _current_task() -> tuple[str | None, str | None]:
    return _task_context() if _task_context is not None else (None, None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, service, task_id/task_name
    inside a Celery task, exception text, and every `extra=` field."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if _service:
            out["service"] = _service
        out["pid"] = record.process
        task_id, task_name = _current_task()
        if task_id:
            out["task_id"], out["task_name"] = task_id, task_name
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_") and key not in out:
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return f"[{_service}] {line}" if _service else line


def setup_logging(settings: Settings | None = None, *, service: str | None = None, fmt: str | None = None,
                  level: str | None = None, stream=None) -> logging.Handler:
    """Send every log record to `stream` (stderr) as text or JSON. Idempotent: calling it again replaces
    the handler it installed before and leaves other handlers (pytest's, for instance) alone."""
    global _service
    settings = settings or get_settings()
    if service is not None:
        _service = service
    fmt = fmt or settings.log_format
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_improbable", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._improbable = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel((level or settings.log_level).upper())
    logging.captureWarnings(True)
    return handler


def set_service(name: str | None) -> None:
    """The `service` field of JSON log lines (bot, generate@host, beat, ...)."""
    global _service
    _service = name
