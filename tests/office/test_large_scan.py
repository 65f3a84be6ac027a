"""A colour scan over the provider's 10,000,000 bytes is re-rendered at fax resolution and sent (docs/documents.md, Too large)."""

from __future__ import annotations

import io
from pathlib import Path

import img2pdf
import pikepdf
import pytest
from support.e2f import RawSMTP, load
from support.office import message, run_office_gateway

from gatewayd.documents.builder import MAX_FAX_BYTES, build_document
from gatewayd.documents.errors import DocumentTooLarge
from gatewayd.documents.faxres import render_at_fax_resolution

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def colour_scan(pages: int, *, seed: int = 1) -> bytes:
    """``pages`` A4 pages of random colour noise at 300 dpi (JPEG): what a scanner's worst case looks like."""
    from PIL import Image

    rng = __import__("random").Random(seed)
    jpegs = []
    for _ in range(pages):
        noise = rng.randbytes(2480 * 3508 * 3)
        image = Image.frombytes("RGB", (2480, 3508), noise)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=60, dpi=(300, 300))
        jpegs.append(buf.getvalue())
    return img2pdf.convert(jpegs)


@pytest.fixture(scope="module")
def scan() -> bytes:
    data = colour_scan(5)
    assert len(data) > 20_000_000, len(data)
    return data


async def test_a_20_mb_colour_scan_arrives_under_the_limit_with_every_page(tmp_path: Path, sim, sim_data, scan: bytes) -> None:
    config = load(tmp_path, sim_data)
    async with run_office_gateway(config, sim=sim) as (gw, _converter):
        client = await RawSMTP.connect(gw.port)
        try:
            _, _, reply = await client.send(message([("scan.pdf", scan)], subject="big scan"))
        finally:
            await client.close()
        assert reply.startswith("250 2.0.0 queued as"), reply
        job_id = int(reply.rsplit(" ", 1)[-1])
        from support.office import _sent  # the same wait as the office tests

        (fax,) = await _sent(sim, gw, [job_id])
    assert len(fax.document) < MAX_FAX_BYTES, len(fax.document)
    with pikepdf.open(io.BytesIO(fax.document)) as pdf:
        assert len(pdf.pages) == 5
        for page in pdf.pages:  # the page keeps its size (A4 in points, within a pixel)
            box = [float(v) for v in page.mediabox]
            assert abs(box[2] - box[0] - 595.3) < 1.0 and abs(box[3] - box[1] - 841.9) < 1.0, box


def test_what_does_not_fit_even_at_fax_resolution_is_still_refused() -> None:
    # The same scan with a 1 MB limit: re-rendered, still too large, refused with both sizes.
    from dataclasses import dataclass

    @dataclass
    class Part:
        filename: str
        kind: str
        data: bytes

    data = colour_scan(2, seed=2)
    with pytest.raises(DocumentTooLarge) as refused:
        build_document([Part("scan.pdf", "pdf", data)], cover=None, max_bytes=1_000_000)
    assert "at fax resolution, limit 1000000" in str(refused.value), str(refused.value)


def test_a_giant_page_is_not_rendered() -> None:
    pdf = pikepdf.new()
    pdf.add_blank_page(page_size=(5000, 5000))
    buf = io.BytesIO()
    pdf.save(buf)
    from gatewayd.documents.errors import ConversionError

    with pytest.raises(ConversionError, match="too large to re-render"):
        render_at_fax_resolution(buf.getvalue())
