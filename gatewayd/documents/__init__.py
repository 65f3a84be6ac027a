"""Fax documents, shared by both flows: attachments and a cover page become one PDF; a received TIFF becomes a PDF.

docs/documents.md describes what is accepted and what comes out. The
modules, each with one job (import them directly; this package file
imports nothing, so importing ``gatewayd.documents.errors`` stays cheap):

- ``errors``: the document refusals (SMTP replies) and conversion errors;
- ``geometry``: paper sizes, fax resolutions, the pixel limit, image placement;
- ``pdf``: opening, checking, counting and writing PDFs (pikepdf);
- ``tiff``: the TIFF IFD reader and the direct CCITT G4 PDF writer;
- ``images``: image checks from headers, flattening, img2pdf, ``tiff_to_pdf``;
- ``cover``: the cover page, its font subsets and CJK fallback (fpdf2, fontTools);
- ``builder``: ``build_document``, ``build_parts`` (attachments once, a cover
  per recipient) and the async ``DocumentBuilder``;
- ``assemble``: a recipient's cover joined to the attachments, the page header line.
- ``faxres``: a document too large re-rendered at fax resolution (Ghostscript);
- ``officekinds``: office and text documents recognised by their bytes;
- ``office``: the warm, sandboxed LibreOffice converter pool (``uno_worker``
  is its LibreOffice side, run by the Python that has ``uno``).

Nothing here imports a flow (``gatewayd.email_to_fax``,
``gatewayd.fax_to_email``): the flows import this package.
"""
