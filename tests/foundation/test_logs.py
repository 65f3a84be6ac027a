"""Structured logging: JSON lines off a TTY, console on one, context binding,
stdlib loggers routed through the same formatter, tracebacks without locals."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from gatewayd.logs import bind_context, get_logger, setup_logging

pytestmark = pytest.mark.usefixtures("restore_logging")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_auto_is_json_lines_off_a_tty() -> None:
    out = io.StringIO()
    setup_logging("info", "auto", stream=out)
    get_logger("gatewayd.test").info("job_queued", job_id=7, number="+78123092631")
    get_logger("gatewayd.test").warning("slow", seconds=1.5)
    first, second = records(out)
    assert first["event"] == "job_queued" and first["job_id"] == 7 and first["number"] == "+78123092631"
    assert first["level"] == "info" and first["logger"] == "gatewayd.test"
    assert first["timestamp"].endswith("Z")  # UTC, ISO 8601
    assert second["level"] == "warning" and second["seconds"] == 1.5


def test_auto_is_console_on_a_tty() -> None:
    out = FakeTTY()
    setup_logging("info", "auto", stream=out)
    get_logger("gatewayd.test").info("job_queued", job_id=7)
    text = out.getvalue()
    assert "job_queued" in text and "job_id=7" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_console_when_asked_even_off_a_tty() -> None:
    out = io.StringIO()
    setup_logging("info", "console", stream=out)
    get_logger("gatewayd.test").info("hello", n=1)
    assert "hello" in out.getvalue() and "n=1" in out.getvalue()
    assert not out.getvalue().lstrip().startswith("{")


def test_json_when_asked_even_on_a_tty() -> None:
    out = FakeTTY()
    setup_logging("info", "json", stream=out)
    get_logger("gatewayd.test").info("hello")
    assert records(out)[0]["event"] == "hello"


def test_level_filters() -> None:
    out = io.StringIO()
    setup_logging("warning", "json", stream=out)
    log = get_logger("gatewayd.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [r["event"] for r in records(out)] == ["w", "e"]


def test_bound_context_appears_and_goes() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    log = get_logger("gatewayd.test")
    with bind_context(job_id=42, message_id="<m@example.com>"):
        log.info("inside")
        logging.getLogger("aiosmtpd").warning("stdlib inside")
    log.info("outside")
    inside, stdlib_inside, outside = records(out)
    assert inside["job_id"] == 42 and inside["message_id"] == "<m@example.com>"
    assert stdlib_inside["job_id"] == 42
    assert "job_id" not in outside


async def test_context_is_per_task() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    log = get_logger("gatewayd.test")

    async def handle(job_id: int) -> None:
        with bind_context(job_id=job_id):
            await asyncio.sleep(0.01)
            log.info("step", mine=job_id)

    await asyncio.gather(handle(1), handle(2))
    for r in records(out):
        assert r["job_id"] == r["mine"]


def test_stdlib_loggers_are_json_too() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    logging.getLogger("aiosmtpd").warning("peer %s sent %d bytes", "192.0.2.1", 10)
    logging.getLogger("some.library").error("broken")
    logging.getLogger("aiosmtpd").info("chatty at info")  # held at WARNING unless debugging
    first, second = records(out)
    assert first == {**first, "event": "peer 192.0.2.1 sent 10 bytes", "logger": "aiosmtpd", "level": "warning"}
    assert second["logger"] == "some.library" and second["level"] == "error"


def test_debug_lets_library_info_through() -> None:
    out = io.StringIO()
    setup_logging("debug", "json", stream=out)
    logging.getLogger("httpx").info("HTTP Request: GET ...")
    assert records(out)[0]["logger"] == "httpx"


def _fail_with_a_secret_in_a_local() -> None:
    client_secret = "hunter2-local-value"  # noqa: F841 - the point of the test
    raise ValueError("provider said no")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_tracebacks_carry_no_frame_locals(fmt) -> None:
    out = io.StringIO()
    setup_logging("info", fmt, stream=out)
    try:
        _fail_with_a_secret_in_a_local()
    except ValueError:
        get_logger("gatewayd.test").exception("submit_failed", job_id=3)
        logging.getLogger("aiosmtpd").exception("handler crashed")
    text = out.getvalue()
    assert "hunter2-local-value" not in text
    assert text.count("ValueError: provider said no") == 2
    assert "_fail_with_a_secret_in_a_local" in text  # the frames are there, only not their locals
    if fmt == "json":
        ours, theirs = records(out)
        assert ours["event"] == "submit_failed" and ours["job_id"] == 3
        assert ours["exception"].startswith("Traceback (most recent call last):")
        assert theirs["logger"] == "aiosmtpd" and "ValueError" in theirs["exception"]


def test_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "json", stream=first)
    setup_logging("info", "json", stream=second)  # as a SIGHUP reload does
    get_logger("gatewayd.test").info("once")
    assert first.getvalue() == ""
    assert len(records(second)) == 1
