#!/usr/bin/env python3
"""Figure (c): documents.

* A 20-page G4 fax TIFF (ghostscript, 204x196 dpi, A4) to PDF in-process,
  with gatewayd's own functions (``tiff_to_pdf`` for received faxes and
  ``build_document`` for an emailed TIFF), against the whole-process time of
  libtiff's ``tiff2pdf`` (and ImageMagick's ``convert`` once, for the
  record). Target: within 2x of ``tiff2pdf``.
* A 2-page PDF plus a JPEG photo to the final fax PDF (``build_document``),
  without and with the cover page. Target: under 50 ms.
* The cover page alone (``render_cover``) for Latin-1, Cyrillic and CJK
  text: the per-recipient cost of intake (docs/performance.md). Run with
  ``PYTHONPATH=<another checkout>`` to compare two versions on one machine.
* Merging 10 PDFs and counting the pages: pikepdf (what gatewayd uses)
  against pypdf, when pypdf is installed (it is not a gatewayd dependency:
  ``.venv/bin/pip install pypdf`` puts it in the venv for this comparison
  only); without it the comparison is skipped with a note.

Times are medians of repeated runs (best of a few for whole processes).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BenchError, g4_tiff, machine, median, require, verdict, workdir  # noqa: E402


def timed(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm up (imports, caches)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return median(samples)


def process_time(args: list[str], runs: int, timeout: float = 120.0) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, timeout=timeout)
        samples.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise BenchError(f"{args[0]} failed: {proc.stderr.decode(errors='replace')[:300]}")
    return median(samples)


def photo_jpeg() -> bytes:
    """A 1600x1200 photo-like JPEG (smooth gradient plus some noise), ~300-500 KB."""
    from PIL import Image, ImageFilter

    noise = Image.frombytes("RGB", (400, 300), noise_jpeg_bytes_raw(400 * 300 * 3))
    img = noise.resize((1600, 1200)).filter(ImageFilter.GaussianBlur(2))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def noise_jpeg_bytes_raw(n: int) -> bytes:
    import random

    return random.Random(3).randbytes(n)


def two_page_pdf(workdir_: Path) -> bytes:
    gs = require("gs", "ghostscript")
    ps = workdir_ / "two.ps"
    ps.write_text("%!PS\n/Helvetica findfont 24 scalefont setfont\n"
                  "72 720 moveto (Invoice page 1) show showpage\n72 720 moveto (Invoice page 2) show showpage\n")
    out = workdir_ / "two.pdf"
    subprocess.run([gs, "-q", "-dNOPAUSE", "-dBATCH", "-dSAFER", "-sPAPERSIZE=a4", "-sDEVICE=pdfwrite", f"-sOutputFile={out}", str(ps)],
                   check=True, capture_output=True, timeout=60)
    return out.read_bytes()


def main() -> int:
    from gatewayd.documents.builder import build_document
    from gatewayd.documents.cover import CoverPage
    from gatewayd.documents.images import tiff_to_pdf
    from gatewayd.email_to_fax.parse import Attachment

    print("== (c) documents ==")
    print(f"machine: {machine()}")
    results: list[str] = []
    with workdir("documents") as root:
        tiff = g4_tiff(20, root)
        tif_path = root / "fax.tif"
        print(f"\n-- 20-page G4 TIFF ({len(tiff):,} bytes) to PDF --")
        pdf, pages = tiff_to_pdf(tiff)
        if pages != 20:
            raise BenchError(f"tiff_to_pdf made {pages} pages, not 20")
        t_in = timed(lambda: tiff_to_pdf(tiff), 20)
        att = Attachment("fax.tif", "tiff", tiff, "image/tiff")
        doc = build_document([att], cover=None)
        if doc.pages != 20:
            raise BenchError(f"build_document made {doc.pages} pages, not 20")
        t_build = timed(lambda: build_document([att], cover=None), 20)
        tiff2pdf = require("tiff2pdf", "libtiff-tools")
        t_tool = process_time([tiff2pdf, "-o", str(root / "tiff2pdf.pdf"), str(tif_path)], 10)
        print(f"  gatewayd tiff_to_pdf, in-process       : {t_in * 1000:8.1f} ms ({len(pdf):,} bytes)")
        print(f"  gatewayd build_document (emailed TIFF)  : {t_build * 1000:8.1f} ms ({len(doc.pdf):,} bytes)")
        print(f"  libtiff tiff2pdf, whole process         : {t_tool * 1000:8.1f} ms ({(root / 'tiff2pdf.pdf').stat().st_size:,} bytes)")
        convert = shutil.which("convert")
        if convert and Path("/usr/bin/convert").exists():
            try:
                t_im = process_time(["/usr/bin/convert", str(tif_path), str(root / "im.pdf")], 1, timeout=120)
                print(f"  ImageMagick convert, whole process      : {t_im * 1000:8.1f} ms")
            except (BenchError, subprocess.TimeoutExpired) as exc:
                print(f"  ImageMagick convert: not measured ({exc})")
        else:
            print("  ImageMagick convert: not installed (make bench-deps installs imagemagick)")
        worst = max(t_in, t_build)
        results.append(f"20-page G4 TIFF in-process {worst * 1000:.1f} ms vs tiff2pdf {t_tool * 1000:.1f} ms = "
                       f"{worst / t_tool:.2f}x (target within 2x) {verdict(worst <= 2 * t_tool)}")

        print("\n-- a PDF plus a JPEG to the final fax PDF --")
        two = two_page_pdf(root)
        jpeg = photo_jpeg()
        atts = [Attachment("invoice.pdf", "pdf", two, "application/pdf"), Attachment("photo.jpg", "jpeg", jpeg, "image/jpeg")]
        cover = CoverPage(sender="Alice <alice@example.com>", recipient="+7 812 309-26-31", date="Mon, 1 Jan 2024 12:00:00 +0000",
                          subject="Invoice and photo", body="Please find the invoice and the photo of the damaged part.\nRegards, Alice")
        doc = build_document(atts, cover=None)
        t_plain = timed(lambda: build_document(atts, cover=None), 20)
        doc_cover = build_document(atts, cover=cover)
        t_cover = timed(lambda: build_document(atts, cover=cover), 20)
        print(f"  inputs: PDF {len(two):,} bytes (2 pages) + JPEG {len(jpeg):,} bytes (1600x1200)")
        print(f"  build_document, no cover page   : {t_plain * 1000:8.1f} ms -> {doc.pages} pages, {len(doc.pdf):,} bytes")
        print(f"  build_document, with cover page : {t_cover * 1000:8.1f} ms -> {doc_cover.pages} pages, {len(doc_cover.pdf):,} bytes")
        results.append(f"PDF + JPEG to fax PDF {t_plain * 1000:.1f} ms without cover {verdict(t_plain < 0.050)}, "
                       f"{t_cover * 1000:.1f} ms with cover (target < 50 ms) {verdict(t_cover < 0.050)}")

        print("\n-- the cover page alone (render_cover), by the script of its text --")
        from gatewayd.documents.cover import render_cover
        for label, subject, body in (
            ("Latin-1", "Invoice 42", "Please find the invoice attached.\nRegards, Alice"),
            ("Cyrillic", "Счёт № 42", "Прошу оплатить счёт до пятницы.\nС уважением, Иван"),
            ("CJK", "請求書 42", "請求書を添付します。\n안녕하세요"),
        ):
            page = CoverPage(sender="Alice <alice@example.com>", recipient="+7 812 309-26-31",
                             date="Mon, 1 Jan 2024 12:00:00 +0000", subject=subject, body=body)
            t_page = timed(lambda page=page: render_cover(page, attachment_pages=3), 20)
            print(f"  {label:<9}: {t_page * 1000:8.1f} ms")

        print("\n-- merge 10 PDFs (20 pages each) and count the pages: pikepdf vs pypdf --")
        inputs = [pdf] * 10
        t_pike = timed(lambda: merge_pikepdf(inputs), 10)
        t_count_pike = timed(lambda: [count_pikepdf(p) for p in inputs], 10)
        print(f"  pikepdf: merge {t_pike * 1000:8.1f} ms, count x10 {t_count_pike * 1000:7.1f} ms")
        try:
            import pypdf  # noqa: F401
        except ImportError:
            print("  pypdf is not installed: comparison skipped (it is not a gatewayd dependency; "
                  "`.venv/bin/pip install pypdf` adds it to the venv for this bench only)")
        else:
            t_py = timed(lambda: merge_pypdf(inputs), 5)
            t_count_py = timed(lambda: [count_pypdf(p) for p in inputs], 5)
            print(f"  pypdf  : merge {t_py * 1000:8.1f} ms, count x10 {t_count_py * 1000:7.1f} ms "
                  f"(pikepdf {t_py / t_pike:.1f}x faster merging, {t_count_py / t_count_pike:.1f}x counting)")
            results.append(f"pikepdf vs pypdf: merge {t_py / t_pike:.1f}x faster, count {t_count_py / t_count_pike:.1f}x faster (reference 3-12x)")

    print("\n-- targets --")
    for line in results:
        print(f"  {line}")
    return 0


def merge_pikepdf(inputs: list[bytes]) -> int:
    import pikepdf

    out = pikepdf.new()
    opened = [pikepdf.open(io.BytesIO(data)) for data in inputs]
    for src in opened:
        out.pages.extend(src.pages)
    buf = io.BytesIO()
    out.save(buf)
    for src in opened:
        src.close()
    return len(out.pages)


def count_pikepdf(data: bytes) -> int:
    import pikepdf

    with pikepdf.open(io.BytesIO(data)) as pdf:
        return len(pdf.pages)


def merge_pypdf(inputs: list[bytes]) -> int:
    import pypdf

    writer = pypdf.PdfWriter()
    for data in inputs:
        writer.append(pypdf.PdfReader(io.BytesIO(data)))
    buf = io.BytesIO()
    writer.write(buf)
    return len(writer.pages)


def count_pypdf(data: bytes) -> int:
    import pypdf

    return len(pypdf.PdfReader(io.BytesIO(data)).pages)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
