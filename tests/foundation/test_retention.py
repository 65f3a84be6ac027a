"""Retention (gatewayd/store/retention.py, docs/operations.md "Retention and privacy"):
what a purge round takes and what it never takes, the check that received
records outlast the inbound poller's window, the incremental vacuum, and
``gatewayd purge [--dry-run]`` as a real process.

Tests that take ``open_store`` run on both backends (the store contract
suite, tests/support/stores.py); the incremental vacuum and the command's
run are SQLite's (the PostgreSQL counterpart of the first is below)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest

from support.foundation import base_config, gatewayd, merge, to_toml
from support.stores import StoreFactory, age_document, document_exists, execute
from gatewayd.config import INBOUND_WINDOW_SLACK, load_config_data
from gatewayd.fax_to_email import poller
from gatewayd.store import NewJob, ReceivedFax, Store
from gatewayd.store.retention import RetentionPolicy, purge

DAY = 86400.0
START = 1_800_000_000.0


class Clock:
    def __init__(self, t: float = START) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def job(n: int = 0) -> NewJob:
    return NewJob(number=f"+7495123456{n % 10}", dst_num=f"7495123456{n % 10}", extension=100, report_to="a@example.com", source="cli")


def pdf(tag: str, size: int = 2000) -> bytes:
    return b"%PDF-1.4\n%" + tag.encode() + b"\n" + b"x" * size + b"\n%%EOF\n"


def finish(store: Store, job_id: int, *, report: bool = True, provider_id: int | None = None) -> None:
    store.transition(job_id, "sent", "delivered", provider_id=provider_id or job_id)
    if report:
        j = store.get_job(job_id)
        assert store.queue_report(j.id, j.finished_at, [("report", "gw@test", ["a@example.com"], b"report body " * 100, str(j.id))])
        for mail in store.list_mail(state="pending", kind="report"):
            store.mark_mail_sent(mail.id)


def fax(uuid: str, seen: float) -> ReceivedFax:
    return ReceivedFax(uuid, 100, "+74950000000", "74951111111", "", 1000, seen, "queued", ("clinic@example.com",), None, None, "")


POLICY = RetentionPolicy(documents=10 * DAY, mail=3 * DAY, jobs=60 * DAY, received=60 * DAY, inbound_overlap=2 * 30 + INBOUND_WINDOW_SLACK)


def test_inbound_window_slack_is_the_pollers() -> None:
    assert INBOUND_WINDOW_SLACK == poller.OVERLAP_EXTRA + poller.FUTURE_SKEW


def test_a_purge_round_takes_what_is_old_and_finished_and_nothing_else(open_store: StoreFactory) -> None:
    clock = Clock()
    s = open_store(clock=clock)
    try:
        # Day 0: everything that will be old.
        old_doc = s.save_document(pdf("old"))
        shared = s.save_document(pdf("shared"))
        done, = s.enqueue_jobs(old_doc, 1, 2000, [job(1)])
        finish(s, done)
        unreported, = s.enqueue_jobs(old_doc, 1, 2000, [job(2)])
        finish(s, unreported, report=False)
        waiting, = s.enqueue_jobs(s.save_document(pdf("waiting")), 1, 2000, [job(3)])  # queued for ever
        shared_done, = s.enqueue_jobs(shared, 1, 2000, [job(4)])
        finish(s, shared_done)
        pending_mail = s.enqueue_mail("admin", "gw@test", ["admin@example.com"], b"still to send")
        refused = s.enqueue_mail("admin", "gw@test", ["gone@example.com"], b"refused for good")
        s.mark_mail_failed(refused, "550 no such user")
        relayed_box = s.queue_received(fax("relayed", clock.t), "gw@test", b"fax mail " * 500)
        s.mark_mail_sent(relayed_box)
        s.queue_received(fax("queued", clock.t), "gw@test", b"fax mail still pending")
        s.hold_received(fax("held", clock.t), "no recipient")
        s._db.write("INSERT INTO sender_usage (rule_key, at, count) VALUES ('senders[0]', ?, 1)", (clock.t,))
        # Day 90: a younger job shares a document with an old one.
        clock.t = START + 90 * DAY
        young, = s.enqueue_jobs(shared, 1, 2000, [job(5)])
        s.set_meta("inbound.hwm.100", repr(clock.t))
        clock.t = START + 91 * DAY

        result = asyncio.run(purge(s, POLICY))

        tallies = {k: t.rows for k, t in result.tallies.items()}
        assert tallies["jobs"] == 2 and tallies["received"] == 1, tallies  # done + shared_done; "relayed"
        ids = {j.id for j in s.list_jobs(limit=100)}
        assert ids == {unreported, waiting, young}
        assert s.job_events(done) == []
        # documents: the old one stays while the unreported job names it; the shared one stays for the young job
        assert document_exists(s, old_doc)
        assert document_exists(s, shared)
        assert s.read_document(shared) == pdf("shared")
        # mail: the pending one keeps its body; sent/refused lost theirs, records of unpurged things stay
        assert s.get_mail(pending_mail).message == b"still to send"
        states = {m.id: (m.state, m.message) for m in s.list_mail(limit=100)}
        assert refused not in states  # its record too: older than retention.jobs and nobody names it
        assert relayed_box not in states
        assert {r.uuid for r in s.list_received(limit=10)} == {"queued", "held"}
        queued = s.get_received("queued")
        assert s.get_mail(queued.outbox_id).message == b"fax mail still pending"
        assert s.usage_since("senders[0]", 0) == 0
        # a second round finds nothing
        again = asyncio.run(purge(s, POLICY))
        assert again.rows == 0
    finally:
        s.close()


def test_mail_bodies_go_before_their_records(open_store: StoreFactory) -> None:
    clock = Clock()
    s = open_store(clock=clock)
    try:
        box = s.enqueue_mail("report", "gw@test", ["a@example.com"], b"x" * 5000)
        s.mark_mail_sent(box)
        clock.t = START + 2 * DAY
        assert asyncio.run(purge(s, POLICY)).tallies["mail"].rows == 0  # younger than retention.mail
        clock.t = START + 4 * DAY
        result = asyncio.run(purge(s, POLICY))
        assert (result.tallies["mail"].rows, result.tallies["mail"].bytes) == (1, 5000)
        mail = s.get_mail(box)
        assert mail.message == b"" and mail.state == "sent" and mail.recipients == ("a@example.com",) and mail.sent_at == START
    finally:
        s.close()


def test_documents_of_finished_jobs_go_after_retention_documents(open_store: StoreFactory) -> None:
    clock = Clock()
    s = open_store(clock=clock)
    try:
        sha = s.save_document(pdf("doc"))
        j, = s.enqueue_jobs(sha, 1, 2000, [job()])
        finish(s, j)
        clock.t = START + 11 * DAY
        result = asyncio.run(purge(s, POLICY))
        assert result.tallies["documents"].rows == 1 and result.tallies["documents"].bytes == len(pdf("doc"))
        assert not document_exists(s, sha)
        assert s.get_job(j).state == "sent"  # the record stays until retention.jobs
        # a document saved again since (a new job about to be committed by another process) is spared
        sha2 = s.save_document(pdf("fresh"))
        j2, = s.enqueue_jobs(sha2, 1, 2000, [job(2)])
        finish(s, j2)
        clock.t += 11 * DAY
        s.save_document(pdf("fresh"))  # refreshes its age, as intake does (to real time here)
        age_document(s, sha2, clock.t)
        assert asyncio.run(purge(s, POLICY)).tallies["documents"].rows == 0
        assert document_exists(s, sha2)
    finally:
        s.close()


def test_received_records_the_poller_can_still_list_are_kept(open_store: StoreFactory) -> None:
    """Even past retention.received, a record stays while the poller's window
    (its high-water mark less the overlap) still reaches the fax: a daemon
    that was down for months must not mail it again when it polls."""
    clock = Clock()
    s = open_store(clock=clock)
    try:
        box = s.queue_received(fax("old", clock.t), "gw@test", b"fax")
        s.mark_mail_sent(box)
        s.set_meta("inbound.hwm.100", repr(clock.t + 60))  # the poller stopped right after
        clock.t = START + 100 * DAY
        assert asyncio.run(purge(s, POLICY)).tallies["received"].rows == 0
        assert s.get_received("old") is not None
        s.set_meta("inbound.hwm.100", repr(clock.t))  # it polled again since
        assert asyncio.run(purge(s, POLICY)).tallies["received"].rows == 1
        assert s.get_received("old") is None
    finally:
        s.close()


def test_zero_keeps_for_ever(open_store: StoreFactory) -> None:
    clock = Clock()
    s = open_store(clock=clock)
    try:
        sha = s.save_document(pdf("kept"))
        j, = s.enqueue_jobs(sha, 1, 2000, [job()])
        finish(s, j)
        clock.t = START + 5000 * DAY
        result = asyncio.run(purge(s, RetentionPolicy(0, 0, 0, 0)))
        assert sum(t.rows for k, t in result.tallies.items() if k != "counters") == 0
        assert document_exists(s, sha) and s.get_job(j) and s.list_mail()[0].message
    finally:
        s.close()


@pytest.mark.parametrize("store_backend", ["postgresql"], indirect=True)
def test_postgres_has_no_vacuum_steps_and_sizes_the_whole_database(open_store: StoreFactory) -> None:
    """PostgreSQL's autovacuum does what the incremental vacuum does on SQLite:
    a round has no vacuum steps, and the size for /metrics is the database's."""
    clock = Clock()
    s = open_store(clock=clock)
    assert s.ensure_incremental_vacuum() is False
    assert s.vacuum_step() == 0
    s.checkpoint()
    s.checkpoint_aside()
    before = s.storage_facts().file_bytes
    for i in range(50):
        box = s.enqueue_mail("report", "gw@test", ["a@example.com"], bytes([i]) * 20_000)
        s.mark_mail_sent(box)
    facts = s.storage_facts()
    assert facts.file_bytes > before > 1_000_000 and facts.outbox == {"sent": 50}
    clock.t = START + 4 * DAY
    result = asyncio.run(purge(s, POLICY))
    assert result.tallies["mail"].rows == 50 and result.tallies["mail"].bytes == 50 * 20_000 and result.vacuumed_pages == 0
    assert {m.message for m in s.list_mail(limit=100)} == {b""}


# SQLite only: auto_vacuum, the file's size and its free pages.
def test_an_old_database_is_switched_to_incremental_vacuum_and_shrinks(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / "gatewayd.sqlite3")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE filler (x)")  # made before gatewayd purged anything: auto_vacuum NONE
    conn.commit()
    conn.close()
    clock = Clock()
    s = Store(state, clock=clock)
    try:
        assert s._db.query("PRAGMA auto_vacuum")[0][0] == 0
        assert s.ensure_incremental_vacuum() is True
        assert s._db.query("PRAGMA auto_vacuum")[0][0] == 2
        assert s.ensure_incremental_vacuum() is False
        for i in range(300):
            box = s.enqueue_mail("report", "gw@test", ["a@example.com"], bytes([i % 256]) * 20_000)
            s.mark_mail_sent(box)
        s.checkpoint()
        full = (state / "gatewayd.sqlite3").stat().st_size
        assert full > 6_000_000
        clock.t = START + 4 * DAY
        result = asyncio.run(purge(s, POLICY))
        assert result.tallies["mail"].rows == 300 and result.vacuumed_pages > 1000
        after = (state / "gatewayd.sqlite3").stat().st_size
        assert after < full / 5, (full, after, result.vacuumed_pages, s._db.query("PRAGMA freelist_count"), s._db.query("PRAGMA page_count"))
        assert s._db.query("PRAGMA integrity_check")[0][0] == "ok"
    finally:
        s.close()


# ------------------------------------------------------------ configuration


def _check(tmp_path: Path, override: dict) -> tuple[int, str]:
    path = tmp_path / "c.toml"
    path.write_text(to_toml(merge(base_config(tmp_path / "state"), override)))
    result = gatewayd("check-config", "-c", str(path))
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("received", "inbound", "ok"),
    [
        ("400d", {}, True),
        ("0", {}, True),
        ("1d", {}, False),  # first_lookback is 1d: the first window alone reaches further
        ("25h", {}, True),  # 24h + 2 x 30s + 20m < 25h
        ("25h", {"first_lookback": "24h", "poll_interval": "20m"}, False),  # + 40m + 20m = 25h: not longer
        ("2h", {"first_lookback": "1h", "poll_interval": "30s"}, True),
    ],
)
def test_check_config_refuses_received_retention_shorter_than_the_poll_window(tmp_path: Path, received: str, inbound: dict, ok: bool) -> None:
    code, out = _check(tmp_path, {"retention": {"received": received}, "inbound": inbound})
    if ok:
        assert code == 0, out
    else:
        assert code == 2, out
        assert "retention.received: " in out and "not longer than what the inbound poller can still list" in out, out


def test_retention_keys_are_parsed_and_checked() -> None:
    base = base_config(Path("/tmp/state"))
    c = load_config_data(merge(base, {"retention": {"interval": "30m", "documents": "2d", "mail": "0", "jobs": "90d"},
                                      "storage": {"min_free": "2GB"}}), env={})
    assert (c.retention.interval, c.retention.documents, c.retention.mail, c.retention.jobs, c.retention.received) == (1800, 2 * DAY, 0, 90 * DAY, 400 * DAY)
    assert c.storage.min_free == 2_000_000_000
    default = load_config_data(base, env={})
    assert (default.retention.interval, default.retention.documents, default.retention.mail) == (3600, 30 * DAY, 7 * DAY)
    assert default.storage.min_free == 500_000_000
    from gatewayd.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config_data(merge(base, {"retention": {"interval": "10s", "documents": "5m", "mail": "soon", "keep": "1d"}}), env={})
    assert set(err.value.problems) >= {
        'retention.interval: must be at least 1m (or "0": only `gatewayd purge` purges)',
        'retention.documents: must be at least 1h (or "0": keep for ever)',
        'retention.mail: expected a duration such as "30s", "5m" or "2h", got "soon"',
        "retention.keep: unknown key",
    }, err.value.problems


# ------------------------------------------------------------ the command


def test_a_dry_run_counts_what_the_round_then_takes(open_store: StoreFactory) -> None:
    """``purge_plan`` (``gatewayd purge --dry-run``) and a round agree, kind by kind, and the plan changes nothing."""
    clock = Clock()
    s = open_store(clock=clock)
    sha = s.save_document(pdf("finished", 5000))
    j, = s.enqueue_jobs(sha, 1, 5000, [job(1)])
    finish(s, j)
    q, = s.enqueue_jobs(s.save_document(pdf("queued")), 1, 2000, [job(2)])
    box = s.queue_received(fax("r1", clock.t), "gw@test", b"R" * 30_000)
    s.mark_mail_sent(box)
    s._db.write("INSERT INTO sender_usage (rule_key, at, count) VALUES ('senders[0]', ?, 1)", (clock.t,))
    clock.t = START + 100 * DAY
    s.set_meta("inbound.hwm.100", repr(clock.t))
    age_document(s, sha, START)  # the document is as old as its job
    dry = asyncio.run(purge(s, POLICY, dry_run=True))
    plan = {k: (t.rows, t.bytes) for k, t in dry.tallies.items()}
    assert plan["jobs"][0] == 1 and plan["documents"] == (1, len(pdf("finished", 5000))) and plan["received"][0] == 1, plan
    assert plan["mail"][0] == 2 and plan["counters"][0] == 1, plan
    assert {x.id for x in s.list_jobs()} == {j, q} and document_exists(s, sha) and all(m.message for m in s.list_mail())
    done = asyncio.run(purge(s, POLICY))
    for kind in ("jobs", "documents", "received", "mail"):
        assert done.tallies[kind].rows == plan[kind][0], (kind, done.tallies, plan)
    assert done.tallies["documents"].bytes == plan["documents"][1]
    assert [x.id for x in s.list_jobs()] == [q] and not document_exists(s, sha) and s.get_received("r1") is None
    assert document_exists(s, s.get_job(q).document)


def _fill_old_state(state: Path) -> tuple[str, int, int]:
    """A store whose content is 100 days old, plus one unfinished job; returns (document, finished job, queued job)."""
    clock = Clock(time.time() - 100 * DAY)
    s = Store(state, clock=clock)
    try:
        sha = s.save_document(pdf("finished", 5000))
        j, = s.enqueue_jobs(sha, 1, 5000, [job(1)])
        finish(s, j)
        q, = s.enqueue_jobs(s.save_document(pdf("queued")), 1, 2000, [job(2)])
        box = s.queue_received(fax("r1", clock.t), "gw@test", b"R" * 30_000)
        s.mark_mail_sent(box)
    finally:
        s.close()
    old = time.time() - 100 * DAY
    os.utime(state / "documents" / sha[:2] / f"{sha}.pdf", (old, old))  # the file is as old as its job
    return sha, j, q


# SQLite only: the command's configuration names no database_url until [storage] has one (issue 17).
def test_purge_dry_run_lists_counts_and_bytes_and_changes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    sha, finished, queued = _fill_old_state(state)
    path = tmp_path / "c.toml"
    path.write_text(to_toml(merge(base_config(state), {"retention": {"received": "30d", "jobs": "30d"}})))
    before = (state / "gatewayd.sqlite3").read_bytes()
    dry = gatewayd("purge", "--dry-run", "-c", str(path))
    assert dry.returncode == 0, dry.stderr
    lines = {line.split()[0]: line.split() for line in dry.stdout.splitlines() if line.strip()}
    assert lines["jobs"][1] == "1" and lines["documents"][1] == "1" and lines["received"][1] == "1", dry.stdout
    assert lines["mail"][1] == "2", dry.stdout  # the report and the received fax's email
    assert " ".join(lines["documents"][2:4]) == "5.0 KB", dry.stdout
    assert "nothing was changed (--dry-run)" in dry.stdout
    s = Store(state)
    try:
        assert {j.id for j in s.list_jobs()} == {finished, queued}
        assert s.document_path(sha).exists() and s.get_received("r1") is not None
        assert all(m.message for m in s.list_mail())
    finally:
        s.close()
    real = gatewayd("purge", "-c", str(path))
    assert real.returncode == 0, real.stderr
    assert "free pages returned to the file system" in real.stdout
    s = Store(state)
    try:
        assert [j.id for j in s.list_jobs()] == [queued]
        assert not s.document_path(sha).exists() and s.get_received("r1") is None
        assert s.document_path(s.get_job(queued).document).exists()
    finally:
        s.close()
    assert before  # the dry run ran against a real, non-empty database


def test_finished_office_conversions_go_after_retention_jobs_and_pending_ones_stay(open_store: StoreFactory) -> None:
    clock = Clock()
    s = open_store(clock=clock)
    try:
        for state, finished in (("done", START), ("rejected", START), ("pending", None)):
            execute(s, "INSERT INTO conversions (created_at, state, parts, spec, finished_at) VALUES (?, ?, '[]', '{}', ?)",
                    (START, state, finished))
        clock.t = START + 30 * DAY  # younger than retention.jobs: all kept
        asyncio.run(purge(s, POLICY))
        assert execute(s, "SELECT COUNT(*) FROM conversions")[0][0] == 3
        clock.t = START + 61 * DAY
        asyncio.run(purge(s, POLICY))
        assert [r[0] for r in execute(s, "SELECT state FROM conversions")] == ["pending"]
    finally:
        s.close()


def test_a_purge_step_resumes_after_the_rows_it_kept(open_store: StoreFactory) -> None:
    """Keyset paging: a kept row (an unreported job) is not read again by the next step."""
    clock = Clock()
    s = open_store(clock=clock)
    try:
        doc = s.save_document(pdf("paged"))
        unreported, = s.enqueue_jobs(doc, 1, 2000, [job(1)])
        finish(s, unreported, report=False)
        clock.t += 1
        done, = s.enqueue_jobs(doc, 1, 2000, [job(2)])
        finish(s, done)
        now = START + 91 * DAY
        first = s.purge_step("jobs", POLICY, now, None, limit=1)
        assert first.rows == 0 and not first.done
        second = s.purge_step("jobs", POLICY, now, first.cursor, limit=1)
        assert second.rows == 1
        assert {j.id for j in s.list_jobs(limit=10)} == {unreported}
    finally:
        s.close()


def test_expired_web_sessions_go_in_a_round_and_live_ones_stay(open_store: StoreFactory) -> None:
    clock = Clock()
    s = open_store(clock=clock)
    try:
        for token, expires in (("old", START - 1), ("live", START + DAY)):
            execute(s, "INSERT INTO web_sessions (token_hash, account, csrf, created_at, expires_at) VALUES (?, 'a', 'c', ?, ?)",
                    (token, START - DAY, expires))
        asyncio.run(purge(s, POLICY))
        assert [r[0] for r in execute(s, "SELECT token_hash FROM web_sessions")] == ["live"]
    finally:
        s.close()
