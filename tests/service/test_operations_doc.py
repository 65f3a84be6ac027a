"""docs/operations.md stays in step with the code: every command, every
metric family, every restart-only key."""

from __future__ import annotations

import argparse
import re

from prometheus_client.parser import text_string_to_metric_families
from support.service import REPO

from gatewayd.cli import build_parser
from gatewayd.daemon import RESTART_ONLY
from gatewayd.metrics import Metrics

DOC = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")


def test_every_command_is_documented_with_a_heading() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    headings = re.findall(r"^### `gatewayd ([a-z-]+)", DOC, re.M)
    headings += re.findall(r"^### `gatewayd [a-z-]+ .*?` and `gatewayd ([a-z-]+)", DOC, re.M)
    missing = sorted(set(sub.choices) - set(headings))
    assert not missing, f"commands without a section in docs/operations.md: {missing}"


def test_every_metric_family_is_documented() -> None:
    m = Metrics()
    m.provider_latency.labels("GET", "/x").observe(0.1)
    names = set()
    for family in text_string_to_metric_families(m.render().decode()):
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    missing = sorted(n for n in names if f"`{n}`" not in DOC)
    assert not missing, f"metrics not described in docs/operations.md: {missing}"


def test_restart_only_keys_are_documented() -> None:
    section = DOC.split("## Reloading the configuration (SIGHUP)", 1)[1].split("\n## ", 1)[0]
    restart_column = "\n".join(line.rsplit("|", 2)[-2] for line in section.splitlines() if line.startswith("| ") and line.count("|") == 3)
    for sec, key in RESTART_ONLY:
        assert f"`{sec}.{key}`" in restart_column, f"{sec}.{key} is restart-only but not in the restart column"


def doc_swaks_line() -> str:
    m = re.search(r"<!-- begin:demo-swaks -->\n```sh\n(.*?)```\n<!-- end:demo-swaks -->", DOC, re.S)
    assert m, "no demo-swaks block in docs/operations.md"
    return " ".join(m.group(1).replace("\\\n", " ").split())


def test_the_swaks_line_of_the_demo_and_the_docs_works(tmp_path) -> None:
    """The line `gatewayd demo` prints, the same as docs/operations.md shows,
    run with the real swaks (Debian's) against the running demo."""
    import shlex
    import shutil
    import subprocess
    import time

    from support.service import PYTHON, clean_env

    from gatewayd.demo import sample_pdf

    swaks = shutil.which("swaks")
    assert swaks, "swaks is not installed (Debian package: swaks; `make test` installs it)"
    workdir = tmp_path / "demo"
    out_path = tmp_path / "demo.out"
    with open(out_path, "w") as out:
        demo = subprocess.Popen([PYTHON, "-m", "gatewayd", "demo", "--dir", str(workdir), "--smtp-port", "0"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=clean_env())
    try:
        deadline = time.monotonic() + 90
        while "curl -s" not in out_path.read_text() and time.monotonic() < deadline:
            assert demo.poll() is None, out_path.read_text()
            time.sleep(0.3)
        text = out_path.read_text()
        m = re.search(r"^\s+(swaks --server 127\.0\.0\.1:(\d+) .*?\\\n\s+.*)$", text, re.M)
        assert m, text
        printed = " ".join(m.group(1).replace("\\\n", " ").split())
        assert printed == doc_swaks_line().replace("PORT", m.group(2)), (printed, doc_swaks_line())
        (tmp_path / "document.pdf").write_bytes(sample_pdf())
        result = subprocess.run(shlex.split(printed), capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr
        assert re.search(r"^<-  250 2\.0\.0 queued as \d+", result.stdout, re.M), result.stdout[-2000:]
        assert "DEPRECATION" not in result.stdout + result.stderr
        assert 'filename="document.pdf"' in result.stdout
    finally:
        demo.terminate()
        demo.wait(timeout=30)
