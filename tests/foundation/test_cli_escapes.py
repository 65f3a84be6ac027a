"""Text from strangers (envelope senders, subjects, provider statuses and
messages, caller ids) reaches the administrator's terminal escaped (issue
14, item 11; docs/security.md, "Hardening"): no ESC, C1 control or bidi
override is ever printed as is."""

from __future__ import annotations

import pytest

from support.foundation import gatewayd
from gatewayd.commands.terminal import safe_text
from gatewayd.config import load_config
from gatewayd.store import NewJob, ReceivedFax, Store

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\u202eevil\x9b31m\r\nFAKE LINE"
RAW = ("\x1b", "\x07", "\u202e", "\x9b", "\r")


def _clean(out: str) -> None:
    for ch in RAW:
        assert ch not in out, (ch, out)


@pytest.fixture
def hostile_state(write_config):
    path = write_config()
    config = load_config(path, env={})
    store = Store(config.state_dir)
    sha = store.save_document(b"%PDF-1.4 test document")
    (job,) = store.enqueue_jobs(sha, 1, 22, [
        NewJob("+78123092631", "78123092631", 100, f"a{HOSTILE}@example.com", "smtp", f"<{HOSTILE}@x>", f"Invoice {HOSTILE}", note=HOSTILE),
    ])
    store.transition(job, "submitting", "uploading", expect=["queued"])
    store.transition(job, "failed", f"provider said: {HOSTILE}", provider_id=5, provider_status=HOSTILE)
    store.hold_received(ReceivedFax(
        uuid="u-1", extension_id=7, caller_id=HOSTILE, destination=HOSTILE, fax_time="2026-01-01 10:00:00",
        file_size=1, first_seen=0.0, state="no_recipient", recipients=(), outbox_id=None, relayed_at=None, note=HOSTILE,
    ), HOSTILE)
    store.close()
    return path, job


def test_jobs_escapes_every_cell(hostile_state) -> None:
    path, _ = hostile_state
    result = gatewayd("jobs", "-c", str(path))
    assert result.returncode == 0, result.stderr
    _clean(result.stdout)
    assert len(result.stdout.splitlines()) == 2  # the header and one row: no forged line
    assert "a\\x1b]0;pwned\\x07\\x1b[2J\\u202eevil\\x9b31m\\x0d\\x0aFAKE LINE@example.com" in result.stdout


def test_job_escapes_every_field_and_the_history(hostile_state) -> None:
    path, job = hostile_state
    result = gatewayd("job", str(job), "-c", str(path))
    assert result.returncode == 0, result.stderr
    _clean(result.stdout)
    assert not any(line.startswith("FAKE LINE") for line in result.stdout.splitlines())
    assert "\\u202eevil" in result.stdout


def test_received_escapes_provider_text(hostile_state) -> None:
    path, _ = hostile_state
    result = gatewayd("received", "-c", str(path))
    assert result.returncode == 0, result.stderr
    _clean(result.stdout)
    assert "\\x1b]0;pwned" in result.stdout


@pytest.mark.parametrize("text, shown", [
    ("plain text, ÄÖ счет 請求書", "plain text, ÄÖ счет 請求書"),
    ("\x1b[2J", "\\x1b[2J"),
    ("\x9b", "\\x9b"),
    ("a\u202eb\u2066c\u200fd", "a\\u202eb\\u2066c\\u200fd"),
    ("line\u2028break", "line\\u2028break"),
    ("tab\there", "tab\\x09here"),
    ("\x7f", "\\x7f"),
])
def test_safe_text(text: str, shown: str) -> None:
    assert safe_text(text) == shown
