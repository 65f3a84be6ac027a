"""The PDF of a received fax for the console: taken from its email in the outbox, else downloaded from the provider.

The gateway keeps no separate copy of a received fax: its email (in the
outbox, with the fax attached as configured by ``inbound.attach``) is the
local copy. A TIFF is turned into a PDF with the gateway's one converter.
When the email is gone or carries no fax file, the provider is asked.
"""

from __future__ import annotations

from email import message_from_bytes, policy

from gatewayd.documents.images import tiff_to_pdf
from gatewayd.filekinds import sniff_kind
from gatewayd.runtime import Runtime
from gatewayd.store import ReceivedFax

__all__ = ["ReceivedFileMissing", "received_pdf"]


class ReceivedFileMissing(Exception):
    """Neither the outbox nor the provider has the fax's file."""


def _as_pdf(data: bytes, page_size: str) -> bytes | None:
    kind = sniff_kind(data)
    if kind == "pdf":
        return data
    if kind == "tiff":
        return tiff_to_pdf(data, page_size)[0]
    return None


def pdf_from_email(message: bytes, page_size: str) -> bytes | None:
    msg = message_from_bytes(message, policy=policy.default)
    for part in msg.iter_attachments():
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            continue
        pdf = _as_pdf(data, page_size)
        if pdf is not None:
            return pdf
    return None


async def received_pdf(rt: Runtime, fax: ReceivedFax) -> bytes:
    store = rt.store
    page_size = rt.config.documents.page_size
    if fax.outbox_id is not None:
        message = await store.run(store.outbox_message, fax.outbox_id)
        if message:
            import asyncio

            pdf = await asyncio.to_thread(pdf_from_email, message, page_size)
            if pdf is not None:
                return pdf
    try:
        file = await rt.provider.download_received_fax(fax.extension_id, fax.uuid)
    except Exception as exc:
        raise ReceivedFileMissing(f"the fax file is not kept here and the provider did not give it: {exc}") from None
    pdf = _as_pdf(file.data, page_size)
    if pdf is None:
        raise ReceivedFileMissing("the provider's file for this fax is neither a PDF nor a TIFF")
    return pdf
