"""The durable store: migrations, concurrent readers, document durability,
compare-and-set transitions, the outbox and the usage counters.

The store contract suite (issue 17): a test that takes ``open_store`` runs
on both backends (tests/support/stores.py). The SQLite-only tests are about
SQLite or files by nature (marked ``sqlite_only`` below, each with its
reason); the PostgreSQL-only ones are their counterparts there (two nodes
on one database, the writer lock, a frozen session's end)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import textwrap
import threading
import time

import psycopg
import pytest

from support.foundation import PYTHON, base_config, gatewayd, to_toml
from support.postgres import PgServer
from support.stores import StoreFactory, age_document, document_exists, document_names, document_saved_at, execute, fail_writes
from gatewayd.store import (
    FINAL_STATES,
    MIGRATIONS,
    JobNotFound,
    NewJob,
    ReceivedFax,
    Store,
    StoreError,
)
from gatewayd.store.postgres import WRITER_LOCK, postgres_ddl

PDF = b"%PDF-1.4\n% a fax document\n" + b"x" * 1000 + b"\n%%EOF\n"


def new_job(n: int = 0, **kw) -> NewJob:
    base = dict(number=f"+7812309{n:04d}", dst_num=f"7812309{n:04d}", extension=100, report_to="alice@example.com", source="smtp",
                message_id=f"<m{n}@example.com>", subject=f"fax {n}")
    base.update(kw)
    return NewJob(**base)


def enqueue(store: Store, count: int = 1, data: bytes = PDF, **kw) -> list[int]:
    sha = store.save_document(data)
    return store.enqueue_jobs(sha, 2, len(data), [new_job(i, **kw) for i in range(count)])


# SQLite or files by nature: WAL, the file's pragmas, temporary document
# files and their fsync order, SQLite's own write lock.
sqlite_only = pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
postgresql_only = pytest.mark.parametrize("store_backend", ["postgresql"], indirect=True)


@pytest.fixture
def store(open_store: StoreFactory) -> Store:
    return open_store()


def table_names(store: Store) -> set[str]:
    if store.dialect == "postgresql":
        return {r[0] for r in store._db.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    return {r[0] for r in store._db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}


def set_schema_version(store: Store, version: int) -> None:
    if store.dialect == "postgresql":
        execute(store, "UPDATE gatewayd_schema SET version = ?", (version,))
    else:
        execute(store, f"PRAGMA user_version={version}")


# ------------------------------------------------------------- migrations


def test_migrations_from_empty_and_reopen(open_store: StoreFactory) -> None:
    s = open_store()
    assert s.schema_version == len(MIGRATIONS) >= 2
    assert {"jobs", "job_events", "outbox", "received", "sender_usage", "intake_keys", "meta", "documents", "leases"} <= table_names(s)
    job_id = enqueue(s)[0]
    s.set_meta("k", "v")
    s.close()
    s = open_store()
    assert s.schema_version == len(MIGRATIONS)
    assert s.get_job(job_id).state == "queued"
    assert s.get_meta("k") == "v"
    s.close()
    assert (os.stat(s.state_dir).st_mode & 0o777) == 0o700


@sqlite_only
def test_sqlite_store_is_one_wal_file_synced_in_full(open_store: StoreFactory) -> None:
    s = open_store()
    assert s._db.query("PRAGMA journal_mode")[0][0] == "wal"
    assert s._db.query("PRAGMA synchronous")[0][0] == 2  # FULL
    assert (s.state_dir / "gatewayd.sqlite3").exists()


def test_upgrade_from_schema_1_keeps_jobs(tmp_path) -> None:
    """SQLite: a schema-1 file made by hand (the PostgreSQL form is below)."""
    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / "gatewayd.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript("BEGIN;" + MIGRATIONS[0] + "PRAGMA user_version=1; COMMIT;")
    conn.execute("INSERT INTO jobs (created_at, updated_at, state, number, dst_num, extension, source, document, pages, doc_bytes) "
                 "VALUES (1, 1, 'sent', '+78123092631', '78123092631', 100, 'smtp', 'abc', 1, 10)")
    conn.close()
    s = Store(state)
    try:
        assert s.schema_version == len(MIGRATIONS)
        job = s.get_job(1)
        assert (job.state, job.number, job.reported_at) == ("sent", "+78123092631", None)
    finally:
        s.close()


@postgresql_only
def test_postgres_upgrade_from_schema_1_keeps_jobs(open_store: StoreFactory, pg_server: PgServer, pg_database: str) -> None:
    with pg_server.connect(pg_database, autocommit=True) as conn:
        for statement in postgres_ddl(MIGRATIONS[0]).split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("CREATE TABLE gatewayd_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO gatewayd_schema (version) VALUES (1)")
        conn.execute("INSERT INTO jobs (created_at, updated_at, state, number, dst_num, extension, source, document, pages, doc_bytes) "
                     "VALUES (1, 1, 'sent', '+78123092631', '78123092631', 100, 'smtp', 'abc', 1, 10)")
    s = open_store()
    assert s.schema_version == len(MIGRATIONS)
    job = s.get_job(1)
    assert (job.state, job.number, job.reported_at) == ("sent", "+78123092631", None)


def test_newer_schema_is_refused(open_store: StoreFactory) -> None:
    s = open_store()
    set_schema_version(s, len(MIGRATIONS) + 1)
    s.close()
    with pytest.raises(StoreError, match="newer than this gatewayd"):
        open_store()


def test_processes_opening_a_new_store_together_all_succeed(open_store: StoreFactory) -> None:
    """The daemon and a CLI command starting at once both migrate safely (on PostgreSQL: nodes starting together)."""
    state = open_store.state_dir
    code = ("import os; from gatewayd.store import Store; "
            f"Store({str(state)!r}, database_url=os.environ['URL'], database_password=os.environ['PW'] or None).close()")
    env = {**os.environ, "URL": open_store.database_url, "PW": open_store.password or ""}
    procs = [subprocess.Popen([PYTHON, "-c", code], stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert open_store().schema_version == len(MIGRATIONS)


# SQLite only: SQLite's own write lock (the PostgreSQL form follows).
def test_stores_that_saw_an_empty_schema_wait_and_do_not_migrate_twice(tmp_path) -> None:
    """Deterministic form of the race: every opener reads schema 0, then waits
    for the write lock another process holds; only the first may migrate.
    SQLite's own lock (the PostgreSQL form holds the writer lock instead)."""
    state = tmp_path / "state"
    state.mkdir()
    blocker = sqlite3.connect(state / "gatewayd.sqlite3", isolation_level=None)
    assert blocker.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    blocker.execute("BEGIN IMMEDIATE")
    results: list[object] = []

    def open_store() -> None:
        try:
            s = Store(state)
            results.append(s.schema_version)
            s.close()
        except BaseException as exc:  # noqa: BLE001
            results.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # all of them are past reading user_version, waiting for the lock
    blocker.execute("COMMIT")
    for t in threads:
        t.join(30)
    blocker.close()
    assert results == [len(MIGRATIONS)] * 4


def _waiting_for_the_writer_lock(pg_server: PgServer, pg_database: str) -> int:
    """Sessions of ``pg_database`` waiting for the store's writer lock (an advisory lock not granted)."""
    with pg_server.admin() as admin:
        return int(admin.execute(
            "SELECT COUNT(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE d.datname = %s AND l.locktype = 'advisory' AND NOT l.granted", (pg_database,),
        ).fetchone()[0])


def _until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@postgresql_only
def test_nodes_opening_a_new_database_wait_for_the_writer_lock_and_migrate_once(
    open_store: StoreFactory, pg_server: PgServer, pg_database: str,
) -> None:
    """The PostgreSQL form: another session holds the writer lock; every
    opening node waits for it, then exactly one migrates."""
    blocker = pg_server.connect(pg_database, autocommit=True)
    blocker.execute("BEGIN")
    blocker.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
    results: list[object] = []

    def open_one() -> None:
        try:
            results.append(open_store().schema_version)
        except BaseException as exc:  # noqa: BLE001
            results.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    _until(lambda: _waiting_for_the_writer_lock(pg_server, pg_database) == 4, "four nodes waiting")
    assert results == []
    blocker.execute("COMMIT")
    for t in threads:
        t.join(30)
    blocker.close()
    assert results == [len(MIGRATIONS)] * 4


@postgresql_only
def test_two_nodes_a_transaction_on_one_blocks_the_others_writer_until_commit(
    open_store: StoreFactory, pg_server: PgServer, pg_database: str,
) -> None:
    first, second = open_store(), open_store()
    (job_id,) = enqueue(first)
    inside, release = threading.Event(), threading.Event()
    outcome: list[object] = []

    def hold() -> None:
        with first.transaction():
            first.transition(job_id, "submitting", "first node", expect=["queued"])
            inside.set()
            release.wait(30)

    def race() -> None:
        outcome.append(second.transition(job_id, "submitting", "second node", expect=["queued"]))

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(30)
    racer = threading.Thread(target=race)
    racer.start()
    _until(lambda: _waiting_for_the_writer_lock(pg_server, pg_database) == 1, "the second node's writer waiting")
    assert outcome == [] and second.get_job(job_id).state == "queued"  # a reader does not wait, and sees the last commit
    release.set()
    holder.join(30)
    racer.join(30)
    assert outcome == [False]  # it read the state only after the first node's commit
    assert [(e.to_state, e.reason) for e in second.job_events(job_id)][1:] == [("submitting", "first node")]


@postgresql_only
def test_a_node_frozen_in_a_transaction_loses_its_session_and_the_other_proceeds(open_store: StoreFactory) -> None:
    """A node stopped inside a transaction (SIGSTOP) would hold the writer lock
    for ever; the server's idle_in_transaction_session_timeout ends its session,
    its transaction is rolled back, and the other node's writer goes on."""
    frozen = open_store(idle_in_transaction=1.0)
    other = open_store()
    (job_id,) = enqueue(other)
    inside, thaw = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def freeze() -> None:
        try:
            with frozen.transaction():
                frozen.transition(job_id, "submitting", "frozen node", expect=["queued"])
                inside.set()
                thaw.wait(60)  # nothing more is sent to the server meanwhile
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=freeze)
    t.start()
    try:
        assert inside.wait(30)
        # Blocked until the server ends the frozen session (lock_timeout is 30 s: far longer).
        assert other.transition(job_id, "submitting", "other node", expect=["queued"]) is True
    finally:
        thaw.set()
        t.join(30)
    assert len(errors) == 1 and isinstance(errors[0], StoreError | psycopg.Error), errors  # its commit failed
    assert [(e.to_state, e.reason) for e in other.job_events(job_id)][1:] == [("submitting", "other node")]
    assert frozen.get_job(job_id).reason == "other node"  # the pool gives the frozen node a working session again


# --------------------------------------------------- readers while writing


def test_reader_store_while_writer_thread_writes(open_store: StoreFactory) -> None:
    writer = open_store()
    reader = open_store()
    errors: list[BaseException] = []
    done = threading.Event()
    written: list[int] = []

    def write() -> None:
        try:
            for i in range(60):
                (job_id,) = enqueue(writer, data=PDF + str(i).encode())
                writer.transition(job_id, "submitting", "submitting", expect=["queued"])
                writer.transition(job_id, "submitted", "provider id 7", expect=["submitting"], provider_id=1000 + i, submitted_at=time.time())
                written.append(job_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=write)
    t.start()
    reads = 0
    last_count = 0
    try:
        while not done.is_set() or reads < 5:
            jobs = reader.list_jobs(limit=1000)
            assert len(jobs) >= last_count  # committed jobs never disappear
            last_count = len(jobs)
            order = ["queued", "submitting", "submitted"]
            for job in jobs[:5]:
                # A reader sees whole commits: a state and its history entry
                # appear together, so the history read before the job never
                # runs ahead of it, and the history read after never lags.
                before = reader.job_events(job.id)
                current = reader.get_job(job.id).state
                after = reader.job_events(job.id)
                assert order.index(before[-1].to_state) <= order.index(current) <= order.index(after[-1].to_state)
            reader.job_counts()
            reads += 1
    finally:
        t.join(30)
    assert not errors, errors
    assert len(written) == 60
    assert reader.job_counts() == {"submitted": 60}
    assert reads > 5


def test_cli_reads_while_the_daemon_writes(tmp_path) -> None:
    """SQLite: the CLI's configuration names no database_url until [storage] has one (issue 17)."""
    state = tmp_path / "state"
    cfg = tmp_path / "config.toml"
    cfg.write_text(to_toml(base_config(state)))
    writer = Store(state)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        i = 0
        try:
            while not stop.is_set():
                (job_id,) = enqueue(writer, data=PDF + str(i).encode())
                writer.transition(job_id, "submitting", "to the provider", expect=["queued"])
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=write)
    t.start()
    try:
        time.sleep(0.1)
        for _ in range(3):
            jobs = gatewayd("jobs", "-c", str(cfg), "--limit", "5")
            assert jobs.returncode == 0, jobs.stderr
            assert "submitting" in jobs.stdout or "queued" in jobs.stdout
            job = gatewayd("job", "1", "-c", str(cfg))
            assert job.returncode == 0, job.stderr
            assert "queued -> submitting" in job.stdout
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    writer.close()


# -------------------------------------------------------------- documents


def test_document_is_content_addressed(store) -> None:
    sha = store.save_document(PDF)
    assert sha == hashlib.sha256(PDF).hexdigest()
    assert store.save_document(PDF) == sha  # idempotent
    assert store.read_document(sha) == PDF
    assert document_names(store) == {f"{sha}.pdf"}
    with pytest.raises(StoreError, match="cannot read document"):
        store.read_document("0" * 64)


@sqlite_only
def test_document_is_a_private_file_named_by_its_hash(store) -> None:
    sha = store.save_document(PDF)
    path = store.documents_dir / sha[:2] / f"{sha}.pdf"
    assert store.document_path(sha) == path and path.read_bytes() == PDF
    assert (path.stat().st_mode & 0o777) == 0o600
    assert store.save_document(PDF) == sha  # idempotent
    assert store.read_document(sha) == PDF
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@sqlite_only
def test_fsync_then_rename_then_directory_fsync(store, monkeypatch) -> None:
    calls: list[tuple[str, str]] = []
    fd_paths: dict[int, str] = {}
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def spy_open(path, flags, *args, dir_fd=None, **kw):
        fd = real_open(path, flags, *args, dir_fd=dir_fd, **kw)
        fd_paths[fd] = str(path) if dir_fd is None else f"{fd_paths[dir_fd]}/{path}"
        return fd

    def spy_fsync(fd):
        calls.append(("fsync", fd_paths.get(fd, "?")))
        return real_fsync(fd)

    def spy_replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        # Names relative to the subdirectory's descriptor (no link followed)
        where = {fd: fd_paths[fd] + "/" for fd in (src_dir_fd, dst_dir_fd) if fd is not None}
        calls.append(("replace", f"{where.get(src_dir_fd, '')}{src} -> {where.get(dst_dir_fd, '')}{dst}"))
        return real_replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    sha = store.save_document(PDF)
    final = store.document_path(sha)
    kinds = [c[0] for c in calls]
    assert kinds[:2] == ["fsync", "replace"], calls
    assert "/.tmp-" in calls[0][1]  # the data reached the disk under its temporary name
    assert calls[1][1].endswith(f"-> {final}")
    # then the directory holding the new name, and the documents directory
    assert calls[2:] == [("fsync", str(final.parent)), ("fsync", str(store.documents_dir))], calls

    # Another document in the same subdirectory: the subdirectory's entry is
    # already durable (this process fsynced documents/ after seeing it).
    other = next(d for d in (PDF + b"%" + str(n).encode() for n in range(100_000))
                 if hashlib.sha256(d).hexdigest()[:2] == sha[:2])
    calls.clear()
    store.save_document(other, hashlib.sha256(other).hexdigest())
    assert [c for c in calls if c[0] == "fsync"][1:] == [("fsync", str(final.parent))], calls
    # A new process (a new Store) does not know that: it fsyncs documents/ once again.
    again = Store(store.state_dir)
    try:
        third = other + b"%again"
        calls.clear()
        again.save_document(third)
        assert ("fsync", str(store.documents_dir)) in calls, calls
    finally:
        again.close()


def test_save_and_enqueue_stores_the_document_and_its_jobs(store) -> None:
    sha = hashlib.sha256(PDF).hexdigest()
    ids = store.save_and_enqueue(PDF, sha, 2, [new_job(1), new_job(2)])
    assert len(ids) == 2
    assert store.read_document(sha) == PDF
    jobs = [store.get_job(i) for i in ids]
    assert {j.document for j in jobs} == {sha} and {j.pages for j in jobs} == {2} and {j.doc_bytes for j in jobs} == {len(PDF)}


@postgresql_only
def test_a_failed_document_insert_leaves_nothing(store) -> None:
    fail_writes(store, "documents", "INSERT", "disk on fire")
    with pytest.raises(StoreError, match="disk on fire"):
        store.save_document(PDF)
    assert document_names(store) == set()


@sqlite_only
def test_failed_rename_leaves_nothing(store, monkeypatch) -> None:
    def broken_replace(src, dst, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StoreError, match="cannot write document"):
        store.save_document(PDF)
    sha = hashlib.sha256(PDF).hexdigest()
    assert not store.document_path(sha).exists()
    assert not list(store.documents_dir.rglob(".tmp-*"))


# SQLite only: temporary document files (PostgreSQL writes a document in one INSERT).
def test_write_killed_before_rename_is_never_referenced_and_cleaned_at_start(tmp_path) -> None:
    """A process dies between fsync and rename (kill -9): the temporary file is
    all that is left, no row names it, and the next start removes it."""
    state = tmp_path / "state"
    Store(state).close()
    code = textwrap.dedent(f"""
        import os
        from gatewayd.store import Store, NewJob
        s = Store({str(state)!r})
        os.replace = lambda src, dst, **kw: os._exit(9)  # dies right before the rename
        sha = s.save_document(b"%PDF-1.4 interrupted")
        s.enqueue_jobs(sha, 1, 20, [NewJob("+1", "1", 1, "", "cli")])  # never reached
    """)
    proc = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    leftovers = list((state / "documents").rglob(".tmp-*"))
    assert len(leftovers) == 1
    sha = hashlib.sha256(b"%PDF-1.4 interrupted").hexdigest()
    s = Store(state)
    try:
        assert not s.document_path(sha).exists()
        assert s.list_jobs() == []
        assert s.clean_documents() == 1
        assert not leftovers[0].exists()
    finally:
        s.close()


# SQLite only: temporary document files.
def test_clean_documents_removes_a_dead_writers_temporary_file(tmp_path) -> None:
    s = Store(tmp_path / "state")
    try:
        d = s.documents_dir / "ab"
        d.mkdir()
        dead = d / f".tmp-{'ab' * 32}-999999999-1"  # no such pid
        dead.write_bytes(b"partial")
        assert s.clean_documents() == 1 and not dead.exists()
    finally:
        s.close()


# SQLite only: temporary document files.
def test_temporary_file_of_a_live_writer_is_spared_until_stale(tmp_path) -> None:
    s = Store(tmp_path / "state")
    sleeper = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])
    try:
        d = s.documents_dir / "cd"
        d.mkdir()
        live = d / f".tmp-{'cd' * 32}-{sleeper.pid}-1"
        live.write_bytes(b"being written by another gatewayd command")
        assert s.clean_documents() == 0 and live.exists()
        old = time.time() - 7200
        os.utime(live, (old, old))  # stuck for two hours: stale
        assert s.clean_documents() == 1 and not live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        s.close()


def test_clean_documents_keeps_referenced_and_young_files(store) -> None:
    s = store
    referenced = s.save_document(PDF)
    s.enqueue_jobs(referenced, 1, len(PDF), [new_job()])
    young_orphan = s.save_document(b"%PDF young orphan")
    old_orphan = s.save_document(b"%PDF old orphan")
    old = time.time() - 2 * 86400
    for sha in (referenced, old_orphan):
        age_document(s, sha, old)
    assert s.clean_documents() == 1
    assert document_exists(s, referenced)
    assert document_exists(s, young_orphan)
    assert not document_exists(s, old_orphan)
    # saving the same content again refreshes an old document's age, so a
    # start-up clean cannot take it away before its job is committed
    again = s.save_document(PDF)
    assert time.time() - document_saved_at(s, again) < 60


# ---------------------------------------------------------------- jobs


def test_enqueue_stores_jobs_history_and_usage(store) -> None:
    ids = enqueue(store, 3, rule_key="senders[0]")
    assert len(ids) == 3
    for job_id in ids:
        job = store.get_job(job_id)
        assert (job.state, job.pages, job.doc_bytes, job.finished_at) == ("queued", 2, len(PDF), None)
        (event,) = store.job_events(job_id)
        assert (event.from_state, event.to_state, event.reason) == ("", "queued", "accepted from smtp")
    assert store.usage_since("senders[0]", 0) == 3


def test_intake_key_stores_once(store) -> None:
    sha = store.save_document(PDF)
    first = store.enqueue_jobs(sha, 1, len(PDF), [new_job(1), new_job(2)], intake_key="<m@x>:abc")
    second = store.enqueue_jobs(sha, 1, len(PDF), [new_job(1), new_job(2)], intake_key="<m@x>:abc")
    assert first == second and len(store.list_jobs()) == 2
    assert store.intake_seen("<m@x>:abc") == first


def test_transition_compare_and_set(store) -> None:
    (job_id,) = enqueue(store)
    assert store.transition(job_id, "submitting", "picked up", expect=["queued"]) is True
    # a second worker (or the CLI) with a stale view loses, and changes nothing
    assert store.transition(job_id, "canceled", "by user", expect=["queued"]) is False
    job = store.get_job(job_id)
    assert (job.state, job.reason, job.finished_at) == ("submitting", "picked up", None)
    assert [e.to_state for e in store.job_events(job_id)] == ["queued", "submitting"]
    assert store.transition(job_id, "submitted", "provider id 55", expect=["submitting"], provider_id=55, submitted_at=123.0)
    job = store.get_job(job_id)
    assert (job.state, job.provider_id, job.submitted_at) == ("submitted", 55, 123.0)
    history = store.job_events(job_id)
    assert [(e.from_state, e.to_state, e.reason) for e in history[1:]] == [("queued", "submitting", "picked up"), ("submitting", "submitted", "provider id 55")]


def test_transition_compare_and_set_across_threads(open_store: StoreFactory) -> None:
    """Many stores (as many processes, or nodes, would) race for one job: exactly one wins."""
    first = open_store()
    (job_id,) = enqueue(first)
    stores = [open_store() for _ in range(8)]
    wins: list[bool] = []
    barrier = threading.Barrier(len(stores))

    def race(s: Store) -> None:
        barrier.wait()
        wins.append(s.transition(job_id, "submitting", "mine", expect=["queued"]))

    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(wins) == [False] * 7 + [True]
    assert [e.to_state for e in first.job_events(job_id)] == ["queued", "submitting"]


def test_final_states_set_finished_at_once_and_retry_clears_it(store) -> None:
    clock = [1000.0]
    store.clock = lambda: clock[0]
    (job_id,) = enqueue(store)
    store.transition(job_id, "sending", "at the provider")
    clock[0] = 2000.0
    store.transition(job_id, "failed", "busy", finished_at=clock[0])  # retries exhausted: the caller says so
    assert store.get_job(job_id).finished_at == 2000.0
    clock[0] = 3000.0
    store.transition(job_id, "submitted", "retried by the user")
    assert store.get_job(job_id).finished_at is None  # followed again
    assert [j.id for j in store.jobs_in_states(["submitted"])] == [job_id]
    clock[0] = 4000.0
    store.transition(job_id, "sent", "sent")
    assert store.get_job(job_id).finished_at == 4000.0
    clock[0] = 5000.0
    store.transition(job_id, "sent", "provider restated it")
    assert store.get_job(job_id).finished_at == 4000.0
    assert "sent" in FINAL_STATES and "failed" not in FINAL_STATES


def test_transition_rejects_bad_input(store) -> None:
    (job_id,) = enqueue(store)
    with pytest.raises(ValueError, match="unknown job state"):
        store.transition(job_id, "teleported")
    with pytest.raises(ValueError, match="unknown job fields"):
        store.transition(job_id, "sent", color="blue")
    with pytest.raises(JobNotFound):
        store.transition(999, "sent")
    assert store.get_job(job_id).state == "queued"


def test_a_failed_commit_changes_nothing(store) -> None:
    (job_id,) = enqueue(store)
    fail_writes(store, "job_events", "INSERT", "disk on fire")
    with pytest.raises(StoreError, match="disk on fire"):
        store.transition(job_id, "submitting", "x")
    assert store.get_job(job_id).state == "queued"  # the job row's update was rolled back too


# ---------------------------------------------------------------- outbox


def fax(uuid: str = "1a66f8c6-936d-11e5-8563-d3163e2a7e2d") -> ReceivedFax:
    return ReceivedFax(uuid=uuid, extension_id=122, caller_id="1844*001", destination="78123092631", fax_time="2015-11-25 15:08:06",
                       file_size=23142, first_seen=0.0, state="queued", recipients=("sales@example.com",), outbox_id=None, relayed_at=None, note="")


def test_mark_mail_sent_marks_the_received_fax_relayed(store) -> None:
    outbox_id = store.queue_received(fax(), "fax@example.com", b"Subject: fax\r\n\r\nbody\r\n")
    got = store.get_received(fax().uuid)
    assert (got.state, got.outbox_id, got.relayed_at) == ("queued", outbox_id, None)
    assert [m.id for m in store.due_mail(time.time() + 1)] == [outbox_id]
    store.mark_mail_sent(outbox_id)
    got = store.get_received(fax().uuid)
    mail = store.get_mail(outbox_id)
    assert got.state == "relayed" and mail.state == "sent"
    assert got.relayed_at == mail.sent_at is not None
    assert store.due_mail(time.time() + 1) == []


def test_mark_mail_sent_is_one_commit(store) -> None:
    """If marking the fax relayed fails, the mail is not marked sent either."""
    outbox_id = store.queue_received(fax(), "fax@example.com", b"m")
    fail_writes(store, "received", "UPDATE", "no")
    with pytest.raises(StoreError):
        store.mark_mail_sent(outbox_id)
    assert store.get_mail(outbox_id).state == "pending"
    assert store.get_received(fax().uuid).state == "queued"


def test_received_fax_is_queued_once(store) -> None:
    first = store.queue_received(fax(), "fax@example.com", b"m1")
    again = store.queue_received(fax(), "fax@example.com", b"m2")  # a poller seeing it twice
    assert again == first
    assert len(store.list_mail(kind="received")) == 1
    store.mark_mail_sent(first)
    assert store.queue_received(fax(), "fax@example.com", b"m3") == first  # relayed: never again
    assert len(store.list_mail(kind="received")) == 1


def test_held_fax_can_be_queued_later(store) -> None:
    store.hold_received(fax("u-2"), "no recipient")
    assert store.get_received("u-2").state == "no_recipient"
    outbox_id = store.queue_received(fax("u-2"), "fax@example.com", b"m")
    assert store.get_received("u-2").state == "queued" and store.get_received("u-2").outbox_id == outbox_id


def test_refused_mail_can_be_requeued(store) -> None:
    first = store.queue_received(fax("u-3"), "fax@example.com", b"m")
    store.mark_mail_failed(first, "550 no such user")
    second = store.queue_received(fax("u-3"), "fax@example.com", b"m")
    assert second != first and store.get_received("u-3").outbox_id == second


def test_outbox_retry_and_stats(store) -> None:
    clock = [1000.0]
    store.clock = lambda: clock[0]
    mail_id = store.enqueue_mail("report", "fax@example.com", ["alice@example.com"], b"msg", ref="job 1")
    clock[0] = 1100.0
    assert store.outbox_stats() == (1, 100.0)
    store.mark_mail_retry(mail_id, "451 try later", 2000.0)
    assert store.due_mail(1500.0) == [] and [m.id for m in store.due_mail(2000.0)] == [mail_id]
    m = store.get_mail(mail_id)
    assert (m.attempts, m.last_error, m.recipients, m.message) == (1, "451 try later", ("alice@example.com",), b"msg")


# ------------------------------------------------------------ usage counters


def test_usage_counters_survive_reopening(open_store: StoreFactory) -> None:
    s = open_store()
    enqueue(s, 2, rule_key="senders[1]")
    enqueue(s, 1, data=PDF + b"2", rule_key="senders[0]")
    s.close()
    s = open_store()
    assert s.usage_since("senders[1]", time.time() - 3600) == 2
    assert s.usage_since("senders[0]", time.time() - 3600) == 1
    assert s.usage_since("senders[1]", time.time() + 1) == 0
    s.prune_usage(time.time() + 1)
    assert s.usage_since("senders[1]", 0) == 0


async def test_run_uses_the_stores_threads_off_the_loop(store) -> None:
    (job_id,) = await store.run(enqueue, store)
    names = {await store.run(lambda: threading.current_thread().name) for _ in range(3)}
    assert threading.main_thread().name not in names and all(n.startswith("store") for n in names)
    if store.dialect == "sqlite":
        assert len(names) == 1  # SQLite: one connection, one thread keeps the writes in order
    assert (await store.run(store.get_job, job_id)).state == "queued"
    assert await store.run(store.ping)
