"""A command run as root beside the daemon never follows a link the daemon
user planted in the state directory (issue 14, item 5; docs/security.md,
"Hardening"): the store adopts ownership of what it creates for the state
directory's owner, and a ``documents -> /etc`` must not give /etc away.

These tests need root (the CI and the development containers run as root);
they fail, not skip, without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.foundation import gatewayd
from gatewayd.store import Store, StoreError

DAEMON_UID = DAEMON_GID = 65534  # nobody: the state directory's owner


def _require_root() -> None:
    assert os.geteuid() == 0, "these tests check what root does; run them as root"


@pytest.fixture
def daemon_state(tmp_path: Path) -> Path:
    _require_root()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, DAEMON_UID, DAEMON_GID)
    return state


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    (victim / "passwd").write_text("root:x:0:0\n")
    return victim


def _owners(path: Path) -> list[tuple[str, int, int]]:
    out = []
    for p in [path, *sorted(path.rglob("*"))]:
        st = p.lstat()
        out.append((str(p), st.st_uid, st.st_gid))
    return out


def test_a_planted_documents_link_is_refused_and_its_target_keeps_its_owner(write_config, daemon_state: Path, victim: Path) -> None:
    (daemon_state / "documents").symlink_to(victim)
    os.lchown(daemon_state / "documents", DAEMON_UID, DAEMON_GID)
    before = _owners(victim)
    path = write_config({"storage": {"state_dir": str(daemon_state)}})
    result = gatewayd("jobs", "-c", str(path))
    assert _owners(victim) == before
    assert result.returncode == 1, result
    assert "documents" in result.stderr and "symbolic link" in result.stderr, result.stderr


def test_a_planted_database_link_is_refused(write_config, daemon_state: Path, victim: Path) -> None:
    (daemon_state / "gatewayd.sqlite3").symlink_to(victim / "passwd")
    before = _owners(victim)
    content = (victim / "passwd").read_bytes()
    path = write_config({"storage": {"state_dir": str(daemon_state)}})
    result = gatewayd("jobs", "-c", str(path))
    assert _owners(victim) == before
    assert (victim / "passwd").read_bytes() == content
    assert result.returncode == 1 and "symbolic link" in result.stderr, result.stderr


@pytest.mark.parametrize("name", ["gatewayd.sqlite3-wal", "gatewayd.sqlite3-shm"])
def test_a_planted_wal_or_shm_link_is_refused(daemon_state: Path, victim: Path, name: str) -> None:
    (daemon_state / name).symlink_to(victim / "passwd")
    before = _owners(victim)
    with pytest.raises(StoreError, match="symbolic link"):
        Store(daemon_state).close()
    assert _owners(victim) == before


def test_a_planted_document_subdirectory_link_is_refused(daemon_state: Path, victim: Path) -> None:
    store = Store(daemon_state)
    try:
        data = b"%PDF-1.4 planted"
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        (daemon_state / "documents" / sha[:2]).symlink_to(victim)
        before = _owners(victim)
        with pytest.raises(StoreError, match="symbolic link"):
            store.save_document(data, sha)
        assert _owners(victim) == before
        assert sorted(p.name for p in victim.iterdir()) == ["passwd"]
    finally:
        store.close()


def test_cleaning_never_walks_into_a_planted_link(daemon_state: Path, victim: Path) -> None:
    (victim / ".tmp-x-4194305-1").write_text("keep me")
    store = Store(daemon_state)
    try:
        (daemon_state / "documents" / "ab").symlink_to(victim)
        store.clean_documents(orphan_age=0)
        assert (victim / ".tmp-x-4194305-1").exists()
    finally:
        store.close()


def test_the_normal_case_still_adopts_for_the_daemon(daemon_state: Path) -> None:
    store = Store(daemon_state)
    try:
        sha = store.save_document(b"%PDF-1.4 fine")
    finally:
        store.close()
    for _, uid, gid in _owners(daemon_state):
        assert (uid, gid) == (DAEMON_UID, DAEMON_GID)
    assert store.document_path(sha).exists()
