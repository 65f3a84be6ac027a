"""``gatewayd send`` as a real process: same policy and pipeline, picked up by a
running sender, refusals in the SPEC's words with exit 1, usage errors exit 2."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.corpus import make_image, make_pdf
from support.e2f import NUMBER_1, NUMBER_2, PYTHON, REPO, clean_env, load, merge, run_gateway, wait_for, write_config

from gatewayd.store import Store


async def gatewayd(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(PYTHON, "-m", "gatewayd", *args, cwd=REPO, env=clean_env(),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_send_is_picked_up_by_the_running_sender(tmp_path: Path, sim_data: dict, sim) -> None:
    cfg = write_config(tmp_path / "config.toml", sim_data)
    pdf = tmp_path / "letter.pdf"
    pdf.write_bytes(make_pdf(2))
    png = tmp_path / "scan.bin"  # no telling extension: recognised by its bytes
    png.write_bytes(make_image("PNG", (800, 1100)))
    async with run_gateway(load(tmp_path, sim_data), sim=sim, sender=True) as gw:
        rc, out, err = await gatewayd("send", NUMBER_1, str(pdf), str(png), "-c", str(cfg))
        assert (rc, err) == (0, "")
        job_id = int(out.strip().removeprefix("queued as "))
        assert out == f"queued as {job_id}\n"
        rc, out, err = await gatewayd("-c", str(cfg), "send", "8 (495) 123-45-67", str(pdf), "--from", "Alice@Example.com",
                                      "--subject", "Signed", "--extension", "123")
        assert rc == 0, err
        second = int(out.strip().removeprefix("queued as "))
        await wait_for(lambda: all(gw.store.get_job(i).state == "submitted" for i in (job_id, second)), what="CLI jobs submitted")
        first_job, second_job = gw.store.get_job(job_id), gw.store.get_job(second)
    assert (first_job.source, first_job.report_to, first_job.extension, first_job.pages, first_job.rule_key) == ("cli", "", 122, 3, "")
    assert (second_job.number, second_job.report_to, second_job.extension, second_job.subject) == (NUMBER_2, "Alice@Example.com", 123, "Signed")
    assert second_job.rule_key == "senders[0]"
    assert sorted(f.filename for f in sim.sent_faxes()) == sorted([f"fax-{job_id}.pdf", f"fax-{second}.pdf"])


async def test_refusals_and_usage_errors(tmp_path: Path, data: dict) -> None:
    data = merge(data, {"numbers": {"deny": ["+7495"]}, "senders": [{"match": ["*@example.com"], "max_per_hour": 1}]})
    cfg = str(write_config(tmp_path / "config.toml", data))
    Store(tmp_path / "state").close()  # the daemon has run once
    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(make_pdf(1))
    other = tmp_path / "notes.bin"  # no kind the email path takes (a text file is taken: tests/office/test_send_office.py)
    other.write_bytes(b"\x00\x01not a fax document\n")

    cases = [
        (["send", "abc", str(pdf)], 1, "gatewayd send: <abc>: not a fax number\n"),
        (["send", NUMBER_2, str(pdf)], 1, f"gatewayd send: {NUMBER_2}: destination not allowed\n"),
        (["send", NUMBER_1, str(pdf), "--from", "mallory@evil.example"], 1, "gatewayd send: sender not authorised\n"),
        (["send", NUMBER_1, str(other)], 1, "gatewayd send: notes.bin: not a PDF, TIFF, JPEG, PNG, GIF, BMP, WEBP, office or text document\n"),
        (["send", NUMBER_1, str(tmp_path / "missing.pdf")], 2, None),
        (["send", NUMBER_1, str(pdf), "--from", "not an address"], 2, None),
    ]
    for args, code, stderr in cases:
        rc, out, err = await gatewayd(*args, "-c", cfg)
        assert rc == code, (args, err)
        assert out == ""
        if stderr is not None:
            assert err == stderr
        else:
            assert err.startswith("gatewayd send: ") and "Traceback" not in err
    # The hourly limit of the --from rule applies; without --from there is none.
    rc, out, _ = await gatewayd("send", NUMBER_1, str(pdf), "--from", "bob@example.com", "-c", cfg)
    assert rc == 0 and out.startswith("queued as ")
    rc, _, err = await gatewayd("send", NUMBER_1, str(pdf), "--from", "bob@example.com", "-c", cfg)
    assert (rc, err) == (1, "gatewayd send: rate limit reached, try later\n")
    rc, out, _ = await gatewayd("send", NUMBER_1, str(pdf), "-c", cfg)
    assert rc == 0
    store = Store(tmp_path / "state")
    try:
        assert [j.source for j in store.list_jobs()] == ["cli", "cli"]
    finally:
        store.close()


async def test_send_as_root_leaves_files_the_daemon_user_owns(tmp_path: Path, data: dict) -> None:
    """``sudo gatewayd send`` beside a daemon that runs as its own user: every
    file the command creates (document, its directory, the database and its
    -wal/-shm if they were not there yet) belongs to the state directory's
    owner, and that user can read the document and write the store."""
    import os

    if os.geteuid() != 0:
        raise AssertionError("this test needs root (make test runs as root): it checks what root leaves behind")
    owner = 65534  # nobody
    cfg = str(write_config(tmp_path / "config.toml", data))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, owner, owner)
    os.chmod(tmp_path, 0o755)  # the daemon's user must reach its state directory
    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(make_pdf(1))
    rc, out, err = await gatewayd("send", NUMBER_1, str(pdf), "-c", cfg)
    assert rc == 0, err
    created = [state, *state.rglob("*")]
    assert any(p.suffix == ".pdf" for p in created) and (state / "gatewayd.sqlite3").exists()
    wrong = [(str(p.relative_to(tmp_path)), p.stat().st_uid, p.stat().st_gid) for p in created
             if (p.stat().st_uid, p.stat().st_gid) != (owner, owner)]
    assert not wrong, wrong
    # As that user: the document reads back and the store takes a write.
    # (A forked child: it enters the state directory as root, then drops to
    # the owner, as the daemon has it; the paths above it may be root's only.)
    job_id = int(out.strip().removeprefix("queued as "))
    store = Store(state)
    try:
        document = store.document_path(store.get_job(job_id).document).relative_to(state)
    finally:
        store.close()
    # SQLite opens the database by its full path: the owner must be able to
    # pass through pytest's directories (0700, root's) for this check.
    opened = [(d, d.stat().st_mode & 0o7777) for d in tmp_path.parents if d != Path("/") and str(d).startswith("/tmp/")]
    for d, mode in opened:
        os.chmod(d, mode | 0o011)
    try:
        status, said = _as_user(owner, state, document, job_id)
    finally:
        for d, mode in opened:
            os.chmod(d, mode)
    assert (status, said) == (0, "ok"), said


def _as_user(owner: int, state: Path, document: Path, job_id: int) -> tuple[int, str]:
    import os
    import sqlite3

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.chdir(state)
            os.setgroups([])
            os.setgid(owner)
            os.setuid(owner)
            assert Path(document).read_bytes()[:5] == b"%PDF-"
            conn = sqlite3.connect("gatewayd.sqlite3", isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE jobs SET reason = 'touched by the daemon user' WHERE id = ?", (job_id,))
            conn.execute("COMMIT")
            conn.close()
            os.write(write_end, b"ok")
        except BaseException as exc:  # noqa: BLE001
            os.write(write_end, f"{type(exc).__name__}: {exc}".encode()[:500])
        finally:
            os._exit(0)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    said = os.read(read_end, 1000).decode()
    os.close(read_end)
    return status, said
