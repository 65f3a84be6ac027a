"""The converter pool itself, with real LibreOffice: a converter that dies mid-document is replaced, the document refused (docs/documents.md)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from support.office import WORDS, pdftotext

from gatewayd.documents.office import OfficeConverter, OfficeFailed, OfficeSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = [int(c) for c in children.read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *_descendants(kid)]
    return found


def _soffice_pids(root: int) -> list[int]:
    pids = []
    for pid in _descendants(root):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("soffice"):
                pids.append(pid)
        except OSError:
            pass
    return pids


async def test_a_converter_that_dies_is_replaced_and_the_document_refused(tmp_path: Path, documents) -> None:
    converter = OfficeConverter(OfficeSettings(concurrency=1, timeout=120, work_dir=tmp_path))
    try:
        await converter.warm()
        (first,) = converter._idle
        assert first.proc is not None
        slow = "".join(f"line {n} of a long memo\n" for n in range(150_000)).encode()
        job = asyncio.create_task(converter.convert(slow, "txt"))
        await asyncio.sleep(1.0)
        victims = _soffice_pids(first.proc.pid)
        assert victims, "no soffice process under the converter"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(OfficeFailed) as refused:
            await job
        assert refused.value.why == "the converter stopped (out of memory or crashed)", refused.value.why
        assert converter._idle == []  # the dead one is gone
        pdf = await converter.convert(documents["rtf"], "rtf")  # a new converter takes the next document
        assert WORDS["rtf"] in " ".join(pdftotext(pdf, tmp_path).split())
    finally:
        await converter.aclose()
    assert not list(tmp_path.glob("gatewayd-office-*"))  # its files went with it
