"""One logging set-up for the whole process: JSON lines (or readable console lines) on stdout."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.orjson import OrjsonFormatter

from chat_api.core.config import Settings

CONSOLE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stdout)
    if settings.log_format == "json":
        handler.setFormatter(
            OrjsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "chat_api", False):
            root.removeHandler(existing)
    handler.chat_api = True  # type: ignore[attr-defined] - marks ours, so reconfiguring replaces it
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # uvicorn's own loggers go through ours; its access log is replaced by chat_api.access.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
