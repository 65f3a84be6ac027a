"""The command line: hash-password, jobs, job, and usage errors (exit 2)."""

from __future__ import annotations

import re
import time

import pytest

from support.foundation import gatewayd
from gatewayd.config import load_config
from gatewayd.passwords import hash_password, is_password_hash, verify_password
from gatewayd.store import NewJob, Store


# ------------------------------------------------------------ hash-password


def test_hash_password_from_stdin_prints_a_verifiable_hash(write_config) -> None:
    result = gatewayd("hash-password", input="correct horse battery staple\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1  # the bare hash, nothing else on stdout
    hashed = lines[0]
    assert hashed.startswith("$scrypt$n=16384,r=8,p=1$")
    assert verify_password("correct horse battery staple", hashed)
    assert not verify_password("correct horse battery stapler", hashed)
    assert not verify_password("", hashed)
    # and the configuration takes it
    config = load_config(write_config({"smtp": {"users": [{"name": "scanner", "password_hash": hashed}]}}), env={})
    assert config.smtp.users[0].password_hash == hashed


def test_hash_password_is_salted() -> None:
    first = gatewayd("hash-password", input="same\n").stdout.strip()
    second = gatewayd("hash-password", input="same\n").stdout.strip()
    assert first != second and verify_password("same", first) and verify_password("same", second)


def test_hash_password_keeps_spaces_but_not_the_newline() -> None:
    hashed = gatewayd("hash-password", input="  pass word \r\n").stdout.strip()
    assert verify_password("  pass word ", hashed)
    assert not verify_password("pass word", hashed)


def test_hash_password_refuses_an_empty_password() -> None:
    result = gatewayd("hash-password", input="\n")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "empty password" in result.stderr


@pytest.mark.parametrize("bad", [
    "", "plain", "$scrypt$n=16384,r=8,p=1$c2FsdA", "$bcrypt$n=16384,r=8,p=1$c2FsdA$aGFzaA",
    "$scrypt$n=16385,r=8,p=1$c2FsdA$aGFzaA",  # n not a power of two
    "$scrypt$n=4194304,r=8,p=1$c2FsdA$aGFzaA",  # would pin the CPU
    "$scrypt$n=16384,r=8$c2FsdA$aGFzaA", "$scrypt$n=16384,r=8,p=1$!!!$aGFzaA",
])
def test_malformed_hashes_never_verify(bad) -> None:
    assert not is_password_hash(bad)
    assert not verify_password("anything", bad)


def test_hash_verifies_in_process() -> None:
    h = hash_password("päss", n=2**10)
    assert is_password_hash(h) and verify_password("päss", h) and not verify_password("pass", h)


# ------------------------------------------------------------- jobs / job


@pytest.fixture
def config_with_jobs(write_config, tmp_path):
    path = write_config()
    config = load_config(path, env={})
    store = Store(config.state_dir)
    sha = store.save_document(b"%PDF-1.4 test document")
    first, second = store.enqueue_jobs(sha, 3, 22, [
        NewJob("+78123092631", "78123092631", 100, "alice@example.com", "smtp", "<a@example.com>", "Quarterly report", node="gw-a"),
        NewJob("+74951234567", "74951234567", 100, "bob@example.com", "smtp", "<b@example.com>", "Invoice", node="gw-b"),
    ])
    store.update_job(first, claimed_by="gw-b")
    store.transition(first, "submitting", "uploading to the provider", expect=["queued"])
    store.transition(first, "submitted", "provider accepted it as 174", expect=["submitting"], provider_id=174, provider_status="ready_to_send")
    store.transition(first, "sent", "the provider reports it sent", provider_status="sent")
    store.close()
    return path, first, second


def test_jobs_lists_jobs(config_with_jobs) -> None:
    path, first, second = config_with_jobs
    result = gatewayd("jobs", "-c", str(path))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:4] == ["ID", "CREATED", "STATE", "NUMBER"]
    assert len(rows) == 2
    assert header.split()[-2:] == ["NODE", "FROM"]
    assert re.search(rf"^\s*{second}\s.*queued\s+\+74951234567\s+100\s+3\s+gw-b\s+bob@example.com$", rows[0])  # newest first
    assert re.search(rf"^\s*{first}\s.*sent\s+\+78123092631\s+100\s+3\s+gw-a\s+alice@example.com$", rows[1])


def test_jobs_lists_the_leases_below_the_jobs(config_with_jobs) -> None:
    """Which node runs which one-at-a-time worker (gatewayd/leadership.py): held, and expired."""
    path, *_ = config_with_jobs
    store = Store(load_config(path, env={}).state_dir)
    now = time.time()
    store.take_lease("tracker", "gw-a", 3600.0, now=now)
    store.take_lease("outbox", "gw-b", 30.0, now=now - 3600)  # expired an hour ago
    store.close()
    result = gatewayd("jobs", "-c", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    footer = lines[lines.index("") + 1:]
    assert footer[0].split() == ["LEASE", "NODE", "UNTIL"], result.stdout
    assert re.fullmatch(r"outbox\s+gw-b\s+\S+ \S+ \(expired\)", footer[1]), footer
    assert re.fullmatch(r"tracker\s+gw-a\s+\S+ \S+", footer[2]), footer
    assert len(footer) == 3


def test_jobs_without_leases_has_no_footer(config_with_jobs) -> None:
    path, *_ = config_with_jobs
    result = gatewayd("jobs", "-c", str(path))
    assert "LEASE" not in result.stdout and "" not in result.stdout.splitlines(), result.stdout


def test_jobs_filters_by_state_and_limit(config_with_jobs) -> None:
    path, first, second = config_with_jobs
    result = gatewayd("-c", str(path), "jobs", "--state", "sent")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()[1:]
    assert len(rows) == 1 and "+78123092631" in rows[0]
    result = gatewayd("jobs", "--limit", "1", "-c", str(path))
    assert len(result.stdout.splitlines()[1:]) == 1


def test_job_shows_the_full_history(config_with_jobs) -> None:
    path, first, _ = config_with_jobs
    result = gatewayd("job", str(first), "-c", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(rf"^job:\s+{first}$", out, re.M)
    assert re.search(r"^state:\s+sent \(the provider reports it sent\)$", out, re.M)
    assert re.search(r"^number:\s+\+78123092631 \(dialled as 78123092631\)$", out, re.M)
    assert re.search(r"^provider id:\s+174$", out, re.M)
    assert re.search(r"^subject:\s+Quarterly report$", out, re.M)
    assert re.search(r"^node:\s+gw-a$", out, re.M)  # took it in
    assert re.search(r"^claimed by:\s+gw-b$", out, re.M)  # submits it
    history = out.split("history:\n", 1)[1].splitlines()
    steps = [re.sub(r"\s+", " ", line.strip()).split(" ", 2)[2] for line in history]  # drop date and time
    assert steps == [
        "(new) -> queued accepted from smtp",
        "queued -> submitting uploading to the provider",
        "submitting -> submitted provider accepted it as 174",
        "submitted -> sent the provider reports it sent",
    ]
    finished = re.search(r"^finished:\s+(\S+ \S+)$", out, re.M)
    assert finished and finished.group(1) != "-"


def test_job_unknown_id(config_with_jobs) -> None:
    path, *_ = config_with_jobs
    result = gatewayd("job", "999", "-c", str(path))
    assert result.returncode == 1
    assert "no job 999" in result.stderr


def test_jobs_unknown_state_exits_2(config_with_jobs) -> None:
    path, *_ = config_with_jobs
    result = gatewayd("jobs", "--state", "teleported", "-c", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "unknown state 'teleported'" in result.stderr and "queued" in result.stderr


@pytest.mark.parametrize("args", [
    ["jobs", "--limit", "0"],
    ["jobs", "--limit", "many"],
    ["job", "abc"],
    ["job"],
    ["no-such-command"],
    [],
])
def test_usage_errors_exit_2(config_with_jobs, args) -> None:
    path, *_ = config_with_jobs
    result = gatewayd(*args, "-c", str(path)) if args else gatewayd()
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr


def test_jobs_without_a_state_directory(write_config, tmp_path) -> None:
    path = write_config({"storage": {"state_dir": str(tmp_path / "never-created")}})
    result = gatewayd("jobs", "-c", str(path))
    assert result.returncode == 1
    assert "no state directory" in result.stderr
    assert not (tmp_path / "never-created").exists()  # a reader creates nothing


def test_jobs_with_a_broken_config_exits_2(write_config) -> None:
    result = gatewayd("jobs", "-c", str(write_config({"smtp": {"listen": 2525}})))
    assert result.returncode == 2
    assert 'smtp.listen: expected "host:port", got 2525' in result.stderr


def test_version() -> None:
    result = gatewayd("--version")
    assert result.returncode == 0 and result.stdout.startswith("gatewayd ")
