"""A fax document too large for the provider, re-rendered at fax resolution (204 x 196 dpi, bilevel) by Ghostscript.

docs/documents.md, "Too large": a 300-dpi colour scan is often over the
provider's 10,000,000 bytes, while the fax itself only ever carries
204 x 196 dpi black and white. Ghostscript (``-dSAFER``, in a subprocess
with a time and a memory limit) renders every page to a CCITT G4 TIFF at
that resolution, and the TIFF becomes a PDF through the same direct G4
writer as received faxes (``images.tiff_to_pdf``), each page keeping its
physical size. Pages larger than ``MAX_RENDER_POINTS`` on a side are not
rendered (a page the size of a wall is a bitmap bomb): the document stays
too large.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import tempfile
from io import BytesIO
from pathlib import Path

import pikepdf

from gatewayd.documents.errors import ConversionError
from gatewayd.documents.images import tiff_to_pdf

__all__ = ["FAX_DPI", "MAX_RENDER_POINTS", "render_at_fax_resolution"]

FAX_DPI = (204, 196)
# A3's long side is 1191 pt; anything larger than this is not a page a fax carries.
MAX_RENDER_POINTS = 1500.0
RENDER_TIMEOUT = 120.0
RENDER_MEMORY = 1024 * 1024 * 1024


def _limits() -> None:  # in the child, before exec
    resource.setrlimit(resource.RLIMIT_AS, (RENDER_MEMORY, RENDER_MEMORY))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def render_at_fax_resolution(data: bytes, page_size: str = "A4") -> tuple[bytes, int]:
    """``(pdf, pages)``: ``data`` (a checked PDF) as a bilevel 204 x 196 dpi PDF; ``ConversionError`` when it cannot be."""
    gs = shutil.which("gs")
    if gs is None:
        raise ConversionError("Ghostscript (gs) is not installed")
    with pikepdf.open(BytesIO(data)) as pdf:
        pages = len(pdf.pages)
        for page in pdf.pages:
            box = page.mediabox
            width, height = abs(float(box[2]) - float(box[0])), abs(float(box[3]) - float(box[1]))
            if max(width, height) > MAX_RENDER_POINTS:
                raise ConversionError(f"a page of {width:.0f} x {height:.0f} pt is too large to re-render")
    with tempfile.TemporaryDirectory(prefix="gatewayd-faxres-") as tmp:
        src, out = Path(tmp) / "in.pdf", Path(tmp) / "out.tif"
        src.write_bytes(data)
        try:
            done = subprocess.run(
                [gs, "-dSAFER", "-dBATCH", "-dNOPAUSE", "-dQUIET", "-dNOINTERPOLATE", "-dPDFSTOPONERROR", "-dAdjustWidth=0", "-sDEVICE=tiffg4",
                 f"-r{FAX_DPI[0]}x{FAX_DPI[1]}", f"-sOutputFile={out}", str(src)],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=RENDER_TIMEOUT, preexec_fn=_limits, cwd=tmp, check=False,
            )
        except subprocess.TimeoutExpired:
            raise ConversionError("re-rendering took too long") from None
        if done.returncode != 0 or not out.exists():
            raise ConversionError("Ghostscript could not render it")
        rendered, count = tiff_to_pdf(out.read_bytes(), page_size)
    if count != pages:
        raise ConversionError(f"re-rendering gave {count} pages instead of {pages}")
    return rendered, count
