"""`gatewayd demo --exit-after-tour`: the whole product on loopback, as a user runs it."""

from __future__ import annotations

import email
import re
import subprocess
import time
from email import policy
from pathlib import Path

from support.service import PYTHON, REPO, clean_env


def _run_demo(workdir: Path) -> str:
    began = time.monotonic()
    result = subprocess.run(
        [PYTHON, "-m", "gatewayd", "demo", "--dir", str(workdir), "--smtp-port", "0", "--exit-after-tour"],
        capture_output=True, text=True, timeout=90, cwd=REPO, env=clean_env(),
    )
    elapsed = time.monotonic() - began
    out = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{out}\nstderr:\n{result.stderr[-4000:]}"
    assert elapsed < 90
    return out


def test_demo_tour_sends_and_receives_a_fax(tmp_path: Path) -> None:
    # Run twice in one directory, as `make demo` twice in a checkout: the
    # second run starts afresh (a new simulator hands out the same fax ids).
    workdir = tmp_path / "demo"
    _run_demo(workdir)
    out = _run_demo(workdir)
    assert "fax sent:" in out, out
    assert "fax received and relayed to reception@example.com" in out, out
    assert "demo stopped." in out

    # It says where the mails are, and they are there.
    maildir = workdir / "mail"
    paths = [Path(p) for p in re.findall(r"-> (\S+)", out)]
    assert len(paths) == 2, out
    for path in paths:
        assert path.parent == maildir / "new" and path.is_file(), path
    assert sorted(p.name for p in (maildir / "new").iterdir()) == sorted(p.name for p in paths)
    assert f"{maildir}/new/" in out

    report, received = (email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in paths)
    # The status report.
    assert report["Subject"] == "Fax to +78123092631 sent: Quarterly figures"
    assert report["To"] is not None and "you@example.com" in report["To"]
    assert report["Auto-Submitted"] == "auto-generated"
    assert report["In-Reply-To"] and report["Message-ID"] and report["Date"]
    assert "sent" in report.get_body(preferencelist=("plain",)).get_content()
    # The received fax, as a PDF.
    assert received["Subject"] == "Fax from 74951234567 to 78123092631"
    assert received["X-Fax-Caller-ID"] == "74951234567"
    assert "reception@example.com" in received["To"]
    pdfs = [part for part in received.iter_attachments() if part.get_content_type() == "application/pdf"]
    assert len(pdfs) == 1, [p.get_content_type() for p in received.iter_attachments()]
    assert re.fullmatch(r"fax-\d{8}-\d{6}-74951234567\.pdf", pdfs[0].get_filename() or ""), pdfs[0].get_filename()
    assert pdfs[0].get_content().startswith(b"%PDF-")

    # The configuration it ran with is on disk and works with the command line.
    config = workdir / "config.toml"
    assert f"gatewayd jobs -c {config}" in out
    jobs = subprocess.run([PYTHON, "-m", "gatewayd", "jobs", "-c", str(config)], capture_output=True, text=True, timeout=30, cwd=REPO, env=clean_env())
    assert jobs.returncode == 0, jobs.stderr
    assert re.search(r"^\s+1\s.*\ssent\s+\+78123092631\s", jobs.stdout, re.M), jobs.stdout
    received_cmd = subprocess.run([PYTHON, "-m", "gatewayd", "received", "-c", str(config)], capture_output=True, text=True, timeout=30, cwd=REPO, env=clean_env())
    assert received_cmd.returncode == 0, received_cmd.stderr
    assert "74951234567" in received_cmd.stdout
