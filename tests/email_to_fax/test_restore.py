"""A restored copy of the state: every job unfinished in it is looked up in the
provider's list before it could be sent (docs/operations.md, Backup and
restore). The whole round under load, with real daemons, is
tests/reliability/test_backup_restore.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.e2f import NUMBER_1, REPO, clean_env, enqueue, load, run_gateway, wait_for, write_config

from gatewayd.provider.client import ProviderClient
from gatewayd.store import Store, StoreError
from gatewayd.store.backup import RESTORE_MARK, make_backup


def backup_and_restore(state_dir: Path, tmp_path: Path) -> Path:
    """``gatewayd backup``'s copy, put in place as a new state directory."""
    copy = tmp_path / "copy"
    make_backup(state_dir, copy)
    restored = tmp_path / "restored"
    shutil.copytree(copy, restored)
    return restored


def apply_mark(state_dir: Path, clock: Callable[[], float] = time.time) -> None:
    store = Store(state_dir, clock=clock)
    try:
        assert store.apply_restore_mark() is not None
        assert store.apply_restore_mark() is None  # cleared in the same commit
    finally:
        store.close()


async def test_a_queued_job_never_sent_is_sent_once_after_two_looks(tmp_path: Path, sim_data: dict, sim, state_dir: Path) -> None:
    store = Store(state_dir)
    (job_id,) = enqueue(store)
    store.close()
    restored = backup_and_restore(state_dir, tmp_path)
    apply_mark(restored)
    data = dict(sim_data, storage={"state_dir": str(restored)})
    async with run_gateway(load(tmp_path, data), sim=sim, sender=True) as gw:
        gw.rt.wake("sender")
        await wait_for(lambda: gw.store.get_job(job_id).state == "submitted", what="the job submitted")
        events = [e.reason for e in gw.store.job_events(job_id)]
    assert sim.count_requests("POST", "/extension/*/fax/out/") == 1
    assert sim.count_requests("GET", "/extension/*/fax/out/") >= 2  # looked twice before the POST
    assert any(r.startswith("restored from backup") for r in events), events
    assert "provider has no record of the submission" in events


@pytest.mark.parametrize("sent_after", [0.0, 3600.0])
async def test_a_queued_job_the_old_daemon_sent_is_adopted(tmp_path: Path, sim_data: dict, sim, state_dir: Path, sent_after: float) -> None:
    store = Store(state_dir)
    (job_id,) = enqueue(store)
    store.close()
    restored = backup_and_restore(state_dir, tmp_path)
    # After the backup (at once, or an hour later: far outside the window of a
    # lost answer), the old daemon sent it, as its sender would.
    sim.clock.advance(sent_after)
    async with ProviderClient(sim.base_url, sim.token_url, "demo", "demo", timeout=5.0) as client:
        fax = await client.send_fax(122, NUMBER_1.lstrip("+"), _doc(state_dir, job_id), f"fax-{job_id}.pdf")
    apply_mark(restored, clock=lambda: time.time() + sent_after + 60)  # restored a minute after that
    data = dict(sim_data, storage={"state_dir": str(restored)})
    async with run_gateway(load(tmp_path, data), sim=sim, sender=True) as gw:
        gw.rt.wake("sender")
        await wait_for(lambda: gw.store.get_job(job_id).state == "submitted", what="the job adopted")
        job = gw.store.get_job(job_id)
    assert job.provider_id == fax.id
    assert sim.count_requests("POST", "/extension/*/fax/out/") == 1  # the old daemon's only


def _doc(state_dir: Path, job_id: int) -> bytes:
    store = Store(state_dir)
    try:
        return store.read_document(store.get_job(job_id).document)
    finally:
        store.close()


def test_the_mark_is_in_the_copy_only_and_the_copy_is_whole(tmp_path: Path, state_dir: Path) -> None:
    store = Store(state_dir)
    ids = enqueue(store)
    live_doc = store.document_path(store.get_job(ids[0]).document)
    store.close()
    copy = tmp_path / "copy"
    result = make_backup(state_dir, copy)
    assert result.documents == 1 and not result.missing_documents
    live = Store(state_dir)
    try:
        assert live.get_meta(RESTORE_MARK) is None
    finally:
        live.close()
    copied = Store(copy)
    try:
        assert copied.get_meta(RESTORE_MARK) is not None
        assert copied.read_document(copied.get_job(ids[0]).document) == live_doc.read_bytes()
    finally:
        copied.close()
    with pytest.raises(StoreError, match="not an empty directory"):
        make_backup(state_dir, copy)


def test_backup_command(tmp_path: Path, data: dict, state_dir: Path) -> None:
    store = Store(state_dir)
    enqueue(store)
    store.close()
    config = write_config(tmp_path / "config.toml", data)
    dest = tmp_path / "nightly"
    result = subprocess.run([sys.executable, "-m", "gatewayd", "backup", "-c", str(config), str(dest)],
                            capture_output=True, text=True, timeout=60, cwd=REPO, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "1 documents" in result.stdout and (dest / "gatewayd.sqlite3").is_file()
    again = subprocess.run([sys.executable, "-m", "gatewayd", "backup", "-c", str(config), str(dest)],
                           capture_output=True, text=True, timeout=60, cwd=REPO, env=clean_env())
    assert again.returncode == 1 and "not an empty directory" in again.stderr
