"""Free space below ``storage.min_free`` (gatewayd/diskspace.py): intake
answers ``452 4.3.1 insufficient system storage`` before anything is
written (SMTP at MAIL, and ``gatewayd send`` with a clear message),
``/healthz`` names the problem, and all of it recovers when space returns.
The free space is the ``Runtime``'s collaborator, so a test can make the disk
look full without filling one (test_disk_full.py fills a real one).

SQLite only: ``storage.min_free`` is about the state directory's file
system, which holds the queue on SQLite; on PostgreSQL the queue (jobs and
documents) is in the database, whose space is the server's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.e2f import to_toml
from support.reliability import REPO, config_data, in_process, job_ids, load, message, pdf_bytes, smtp_send, stored_jobs

from gatewayd.http import gather_health
from gatewayd.provider.simulator import run_simulator

LOW_452 = "452 4.3.1 insufficient system storage"


@pytest.mark.timeout(60)
async def test_low_free_space_answers_452_names_it_in_healthz_and_recovers(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with run_simulator(send_delays=(0.1, 0.1)) as sim:
        config = load(config_data(state, sim=sim, smtp_port=2525, storage={"state_dir": str(state), "min_free": "500MB"}))
        async with in_process(config) as h:
            free = {"bytes": 10_000_000_000}
            asked: list[Path] = []

            def free_space(path: Path) -> int:
                asked.append(path)
                return free["bytes"]

            h.rt.free_space = free_space
            ok = await smtp_send(h.port, message(pdf_bytes(1, seed=1), subject="before"))
            assert ok.startswith("250 2.0.0 queued as "), ok
            healthy, body, _ = await gather_health(h.rt)
            assert not any(p.startswith("storage") for p in body["problems"]), body

            free["bytes"] = 120_000_000
            transcript: list[str] = []
            reply = await smtp_send(h.port, message(pdf_bytes(1, seed=2), subject="low"), transcript=transcript)
            assert reply == LOW_452, transcript
            assert transcript[-1] == LOW_452 and transcript[-2].startswith("250")  # refused at MAIL, after EHLO
            assert asked and asked[-1] == state
            healthy, body, _ = await gather_health(h.rt)
            assert not healthy
            assert f"storage: only 120MB free in {state} (storage.min_free is 500MB)" in body["problems"], body
            assert h.rt.metrics.storage_free_bytes._value.get() == 120_000_000

            free["bytes"] = 900_000_000
            again = await smtp_send(h.port, message(pdf_bytes(1, seed=3), subject="after"))
            assert again.startswith("250 2.0.0 queued as "), again
            healthy, body, _ = await gather_health(h.rt)
            assert not any(p.startswith("storage") for p in body["problems"]), body
        assert [j[0] for j in stored_jobs(state)] == job_ids(ok) + job_ids(again)


async def test_intake_itself_refuses_when_space_ran_out_after_mail_from(tmp_path: Path) -> None:
    """Space can run out between MAIL and the end of DATA (or arrive by IMAP):
    ``Intake.accept`` checks again before writing the document."""
    from gatewayd.email_to_fax.errors import InsufficientStorage
    from gatewayd.email_to_fax.intake import Intake
    from gatewayd.email_to_fax.policy import Authorisation, NumberPolicy

    state = tmp_path / "state"
    async with run_simulator() as sim:
        config = load(config_data(state, sim=sim, smtp_port=2525))
        async with in_process(config) as h:
            h.rt.free_space = lambda path: 1000
            auth = Authorisation(extension=122, max_pages=10, report_to="alice@example.com", rule=None, user=None)
            destination = NumberPolicy(config.numbers).check("+78123092631", "+78123092631")
            with pytest.raises(InsufficientStorage) as err:
                await Intake(h.rt).accept(message(pdf_bytes(1), subject="x"), authorisation=auth, destinations=[destination],
                                          source="imap", report_to="alice@example.com")
            assert err.value.smtp_reply == LOW_452 and not err.value.permanent
            assert "only 1KB free" in err.value.detail
            assert list((state / "documents").rglob("*.pdf")) == []
        assert stored_jobs(state) == []


def test_gatewayd_send_says_why_it_did_not_queue(tmp_path: Path) -> None:
    """The real command line, on a real file system with a minimum no disk has."""
    state = tmp_path / "state"
    data = config_data(state, sim=type("Sim", (), {"base_url": "http://127.0.0.1:9/api", "token_url": "http://127.0.0.1:9/token"})(),
                       smtp_port=2525, storage={"state_dir": str(state), "min_free": "900000GB"})
    cfg = tmp_path / "config.toml"
    cfg.write_text(to_toml(data))
    state.mkdir()
    doc = tmp_path / "doc.pdf"
    doc.write_bytes(pdf_bytes(1))
    proc = subprocess.run([sys.executable, "-m", "gatewayd", "-c", str(cfg), "send", "+78123092631", str(doc)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 1, proc
    assert proc.stdout == ""
    last = proc.stderr.splitlines()[-1]  # after the warning the intake logs
    assert last.startswith("gatewayd send: not queued: insufficient system storage: only "), proc.stderr
    assert last.endswith(f"free in {state} (storage.min_free is 900000GB); free some space or lower storage.min_free"), proc.stderr
    assert stored_jobs(state) == []
