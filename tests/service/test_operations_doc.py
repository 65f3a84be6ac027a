"""docs/operations.md stays in step with the code: every command, every
metric family, every restart-only key."""

from __future__ import annotations

import argparse
import re

from prometheus_client.parser import text_string_to_metric_families
from service_support import REPO

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
