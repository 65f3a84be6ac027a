"""Blocks of docs/deployment.md, as an administrator copies them."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = REPO / "docs" / "deployment.md"


def doc_block(name: str, doc: Path = DEPLOYMENT) -> str:
    """The fenced code between ``<!-- begin:NAME -->`` and ``<!-- end:NAME -->``."""
    text = doc.read_text(encoding="utf-8")
    m = re.search(rf"<!-- begin:{re.escape(name)} -->\n```[a-z]*\n(.*?)```\n<!-- end:{re.escape(name)} -->", text, re.S)
    assert m, f"no block {name!r} between markers in {doc}"
    return m.group(1)
