"""structlog set-up: human-readable lines on a terminal, JSON lines for the daemon.

Libraries that log through the standard library (hypercorn's error log, ``jetpack.hypercorn``)
go through the same processors and renderer: a stdlib handler on the root logger formats their
records with structlog's ``ProcessorFormatter``, so the daemon's stderr holds only JSON lines.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

_HANDLER_NAME = "jetpack-structlog"


def configure_logging(*, debug: bool = False, json_lines: bool | None = None) -> None:
    """Configure structlog once per process; ``json_lines`` defaults to "stderr is not a tty"."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    shared: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if json_lines:
        renderer = structlog.processors.JSONRenderer()
        tail: list[structlog.typing.Processor] = [structlog.processors.format_exc_info, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        tail = [renderer]
    level = logging.DEBUG if debug else logging.INFO
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(shared, renderer, json_lines=json_lines, level=level)


def _route_stdlib_logging(shared: list[structlog.typing.Processor],
                          renderer: structlog.typing.Processor, *, json_lines: bool,
                          level: int) -> None:
    """Standard-library records (hypercorn's, anything else's) rendered like structlog's own:
    ``event`` is the message, ``logger`` the logger's name, and a traceback a field."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([structlog.processors.format_exc_info] if json_lines else []),
            renderer,
        ],
    )
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)  # configured again (a test, a reload): one handler, not two
    root.addHandler(handler)
    # Other libraries' chatter (httpx logs every request at INFO) stays out of a command's
    # output: warnings and errors only; jetpack's own stdlib loggers (jetpack.hypercorn)
    # follow ``debug``.
    root.setLevel(logging.WARNING)
    logging.getLogger("jetpack").setLevel(level)
    # python-gnupg logs gpg's own failures (and a broken pipe whenever gpg stops reading a
    # signature it has already refused) with tracebacks; jetpack turns each failure into one
    # plain error of its own (jetpack/trust.py), so its log is for `-o debug` only.
    logging.getLogger("gnupg").setLevel(level if level <= logging.DEBUG else logging.CRITICAL)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]  # of a TextIO
    """Writes to whatever ``sys.stderr`` is when a record comes (tests swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        del value  # always the current sys.stderr


def get_logger(**context: object) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(**context)
    return logger
