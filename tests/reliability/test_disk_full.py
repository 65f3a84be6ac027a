"""The state directory's disk full: an 8 MB tmpfs mounted on it (needs root,
as CI has). Every message is answered ``451 4.3.0 temporary failure, try
again`` (never 5xx, never a 250 without its job), the database passes
``integrity_check``, no referenced document is partial, and the same message
is accepted once space returns.

SQLite only: with ``storage.database_url`` the queue is in PostgreSQL, and
a full disk there is the database server's (its commits fail; the outage
tests of the PostgreSQL store cover a database that cannot write); the
node's state directory then holds no queue data to fill."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.reliability import (
    SPEC_451,
    assert_documents_whole,
    config_data,
    in_process,
    integrity,
    job_ids,
    load,
    message,
    pdf_bytes,
    stored_jobs,
    smtp_send,
)

from gatewayd.provider.simulator import run_simulator


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs and needs root (CI and the dev machines run as root)", pytrace=False)
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True, capture_output=True, timeout=30)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system until only about ``leave`` bytes are free."""
    filler = directory / "filler"
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        want = max(0, free - leave)
        block = b"\0" * 65536
        while want > 0 or leave == 0:
            try:
                written = os.write(fd, block[: min(len(block), want)] if want > 0 else block[:4096])
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
            want -= written
    finally:
        os.close(fd)
    return filler


@pytest.mark.timeout(60)
async def test_disk_full_answers_451_keeps_the_store_whole_and_recovers(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "state") as state:
        async with run_simulator(send_delays=(0.1, 0.1)) as sim:
            # storage.min_free off: this test is about the file system really full (test_low_storage.py has the 452).
            config = load(config_data(state, sim=sim, smtp_port=2525, storage={"state_dir": str(state), "min_free": "0"}))
            async with in_process(config) as h:
                ok = await smtp_send(h.port, message(pdf_bytes(1, seed=1), subject="before"))
                assert ok.startswith("250 2.0.0 queued as "), ok
                accepted = job_ids(ok)
                # 2.5 MB on the wire (over the 2 MiB spool threshold: spooled by the DATA reader), a 1.8 MB document.
                big = message(pdf_bytes(1, padding=1_800_000, seed=2), subject="big")
                filler = fill(state, leave=0)
                for _ in range(3):
                    reply = await smtp_send(h.port, big)
                    assert reply == SPEC_451, reply
                # Some space, not enough for the document and its commit.
                filler.unlink()
                filler = fill(state, leave=300_000)
                reply = await smtp_send(h.port, big)
                assert reply == SPEC_451 or reply.startswith("250 2.0.0 queued as "), reply
                accepted += job_ids(reply)
                assert integrity(state) == "ok"
                assert not [p for p in (state / "documents").rglob(".tmp-*")], "a partial document was left behind"
                filler.unlink()
                again = await smtp_send(h.port, big)
                assert again.startswith("250 2.0.0 queued as "), again
                accepted += job_ids(again)
            stored = [j[0] for j in stored_jobs(state)]
            assert stored == accepted, (stored, accepted)
            assert_documents_whole(state)
            assert integrity(state) == "ok"
