"""One logging set-up for the whole process: JSON lines (or readable console lines) on stdout."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace
from pythonjsonlogger.orjson import OrjsonFormatter

from chat_api.core.config import Settings

HANDLER_NAME = "chat-api-stdout"
# The process id tells the server processes of CHAT_API_WORKERS apart (the parent and each worker).
CONSOLE_FORMAT = "%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s"


def _drop_terminal_colours(record: logging.LogRecord) -> bool:
    record.__dict__.pop("color_message", None)  # uvicorn's ANSI copy of the message
    return True


class JsonLines(OrjsonFormatter):
    """One JSON object per line, with the process id (`process.pid`: which of the CHAT_API_WORKERS
    processes wrote it). Inside a request (or any span) the line carries the ids that find its
    trace. They are added to the line only, not to the record: the OTLP handler sends the record
    with its real trace context already.

    The fields are python-json-logger's, in its order: level, logger, process.pid, message, exc_info
    and stack_info when there are, the record's extra fields, time. Built here directly: its generic
    path (format-string fields, renames, defaults) cost a third of the access log's line."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(process)d %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "process": "process.pid"},
            timestamp="time",  # ISO 8601 in UTC
        )

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, dict):  # a dict logged as the message: the library's own way
            return super().format(record)
        record.message = record.getMessage()
        data: dict[str, Any] = {
            "level": record.levelname,
            "logger": record.name,
            "process.pid": record.process,
            "message": record.message,
        }
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        skip = self._skip_fields
        for key, value in record.__dict__.items():
            if key not in skip and not key.startswith("_"):
                data[key] = value
        data["time"] = datetime.fromtimestamp(record.created, tz=UTC)
        self._add_trace(data)
        return orjson.dumps(data, default=self.json_default, option=orjson.OPT_NON_STR_KEYS).decode()

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        self._add_trace(log_data)

    @staticmethod
    def _add_trace(log_data: dict[str, Any]) -> None:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            log_data["trace_id"] = format(context.trace_id, "032x")
            log_data["span_id"] = format(context.span_id, "016x")


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_drop_terminal_colours)
    if settings.log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == HANDLER_NAME:  # configuring again replaces ours
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # uvicorn's own loggers go through ours; its access log is replaced by chat_api.access.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
