"""Fixtures for the message parsing and document building tests.

Inputs are made at test time by real tools (tests/support/corpus.py); outputs are
checked with poppler (pdfinfo, pdftotext, pdftoppm), not with the code
under test. A missing tool fails the run loudly, never skips.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


from support.corpus import CorpusCase, PdfFacts, hostile_corpus, pdfinfo, pdftotext, require_tool

TOOLS = ("gs", "qpdf", "pdfinfo", "pdftotext", "pdftoppm", "tiff2pdf")


@pytest.fixture(scope="session", autouse=True)
def tools() -> None:
    for tool in TOOLS:
        require_tool(tool)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[CorpusCase]:
    return hostile_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def facts(tmp_path: Path) -> Callable[[bytes], PdfFacts]:
    return lambda data: pdfinfo(data, tmp_path)


@pytest.fixture
def text_of(tmp_path: Path) -> Callable[[bytes], str]:
    return lambda data: pdftotext(data, tmp_path)
