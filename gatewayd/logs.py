"""Structured logging: structlog for our events, stdlib loggers routed through it.

``format = "auto"`` gives human-readable lines on a terminal and JSON lines
otherwise (journald, files). Context such as ``job_id`` or ``message_id`` is
bound with ``bind_context`` (contextvars), so every event logged while a
message is handled carries it without passing it around.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Third-party loggers that are chatty at INFO (httpx logs every request line,
# including URLs with query strings) are held at WARNING unless debugging.
_NOISY = ("httpx", "httpcore", "aiosmtpd", "mail.log", "aioimaplib", "aiosmtplib", "aiohttp.access", "fontTools", "pikepdf")


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def setup_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger; safe to call again on reload."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        # Plain traceback text: never the frames' locals, which may hold secrets.
        exc = structlog.processors.format_exc_info
    else:
        # Plain traceback here too: rich/better-exceptions, when installed,
        # would print frame locals (passwords, message bodies).
        renderer = structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
        exc = None
    numeric = _LEVELS.get(level, logging.INFO)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([exc] if exc else []),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _NOISY:
        logging.getLogger(name).setLevel(numeric if numeric == logging.DEBUG else max(numeric, logging.WARNING))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


@contextlib.contextmanager
def bind_context(**values: Any) -> Iterator[None]:
    """Bind values to every log event inside the block (this task only)."""
    tokens = structlog.contextvars.bind_contextvars(**values)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
