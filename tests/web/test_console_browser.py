"""The web console in a real headless Chromium (docs/web.md): log in, send a
PDF through /send and watch it reach "sent", retry a failed job, cancel a
queued one, open a received fax and its preview; another user's job is a
404; a DOCX sent through /send is converted by the daemon's converter, and
refused in the email path's words where office documents are off; a POST without the CSRF token is refused; wrong passwords are
throttled. Screenshots of each page are taken on every run; they go to
docs/web/ only when GATEWAYD_SCREENSHOTS=docs/web is set (docs/web.md), so
a test run leaves the checkout as it was."""

from __future__ import annotations

import asyncio
import io
import os
import re
import tempfile
import zipfile
from pathlib import Path

import httpx
import pytest
from support.office import make_text_document, pdftotext  # type: ignore[import-not-found]
from support.web import EXTENSION, PASSWORDS  # type: ignore[import-not-found]

from gatewayd.demo import sample_pdf, sample_tiff
from gatewayd.store import NewJob

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / os.environ["GATEWAYD_SCREENSHOTS"] if os.environ.get("GATEWAYD_SCREENSHOTS") else Path(tempfile.gettempdir()) / "gatewayd-screenshots"


async def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    DOCS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)


async def log_in(page, url: str, user: str, password: str | None = None) -> None:  # type: ignore[no-untyped-def]
    await page.goto(f"{url}/login")
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", password if password is not None else PASSWORDS[user])
    async with page.expect_navigation():
        await page.click("button:has-text('Log in')")


async def wait_for(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.1)):
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached")


async def test_send_follow_retry_cancel_received(console, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = await browser()
    page = await ctx.new_page()
    await page.goto(f"{console.url}/login")
    await shot(page, "login")
    await log_in(page, console.url, "admin@example.com")
    assert page.url.endswith("/jobs"), await page.content()

    # Send a PDF through /send and watch the job page reach "sent" (job.js refreshes it).
    pdf = tmp_path / "letter.pdf"
    pdf.write_bytes(sample_pdf())
    await page.goto(f"{console.url}/send")
    await page.fill("input[name=number]", "+7 812 309-26-31")
    await page.set_input_files("input[name=document]", str(pdf))
    await page.fill("input[name=subject]", "Quarterly figures")
    await page.fill("textarea[name=note]", "Please call back.")
    await shot(page, "send")
    async with page.expect_navigation():
        await page.click("button:has-text('Send fax')")
    assert re.search(r"/jobs/\d+$", page.url), page.url
    job_id = int(page.url.rsplit("/", 1)[1])
    await page.wait_for_selector("#job-state.state-sent", timeout=30000)
    assert await page.is_visible("img[alt='First page of the fax']")
    size = await page.evaluate("document.querySelector('.preview img').naturalWidth")
    assert size > 100  # the preview image really loaded
    await shot(page, "job")

    # A refusal is shown in words, and nothing is queued.
    await page.goto(f"{console.url}/send")
    await page.fill("input[name=number]", "not a number")
    await page.set_input_files("input[name=document]", str(pdf))
    async with page.expect_navigation():
        await page.click("button:has-text('Send fax')")
    assert await page.text_content(".error")

    # Retry a failed job: the simulator fails the first attempt to this number.
    console.sim.set_outcome("78123092632", ["failed", "sent"])
    await page.goto(f"{console.url}/send")
    await page.fill("input[name=number]", "+78123092632")
    await page.set_input_files("input[name=document]", str(pdf))
    async with page.expect_navigation():
        await page.click("button:has-text('Send fax')")
    failed_id = int(page.url.rsplit("/", 1)[1])
    await page.wait_for_selector("#job-state.state-failed", timeout=30000)
    async with page.expect_navigation():
        await page.click("button:has-text('Retry')")
    await page.wait_for_selector("#job-state.state-sent", timeout=30000)
    store = console.store
    events = await store.run(store.job_events, failed_id)
    assert any("retried from the web console by admin@example.com" in e.reason for e in events)

    # Cancel a queued job (queued straight into the store, due later, so the sender leaves it).
    sha = await store.run(store.save_document, sample_pdf())
    [queued_id] = await store.run(store.enqueue_jobs, sha, 1, 1000, [NewJob("+78123092633", "78123092633", EXTENSION, "", "cli")])
    await store.run(store.update_job, queued_id, next_attempt_at=store.clock() + 3600)
    await page.goto(f"{console.url}/jobs/{queued_id}")
    async with page.expect_navigation():
        await page.click("button:has-text('Cancel')")
    assert (await store.run(store.get_job, queued_id)).state == "canceled"
    assert "canceled" in (await page.text_content("#job-state"))

    await page.goto(f"{console.url}/jobs")
    await shot(page, "jobs")
    rows = await page.locator("table.list tbody tr").count()
    assert rows == 3
    await page.goto(f"{console.url}/jobs?state=sent")
    assert await page.locator("table.list tbody tr").count() == 2

    # A received fax: listed with a thumbnail, opened with its preview and PDF.
    uuid = console.sim.inject_received(EXTENSION, sample_tiff(2), caller_id="74951234567", destination="78123092631")
    await wait_for(lambda: store.run(store.get_received, uuid))
    await page.goto(f"{console.url}/received")
    await page.wait_for_selector(f"a[href='/received/{uuid}'] img")
    await shot(page, "received")
    async with page.expect_navigation():
        await page.click(f"a[href='/received/{uuid}'] >> nth=0")
    assert await page.evaluate("document.querySelector('.preview img').naturalWidth") > 100
    await page.fill("input[name=address]", "someone@example.com")
    async with page.expect_navigation():
        await page.click("button:has-text('Send by email')")
    assert "Queued for someone@example.com" in await page.text_content(".notice")
    await shot(page, "received-fax")
    mails = await store.run(store.list_mail, kind="forward")
    assert [m.recipients for m in mails] == [("someone@example.com",)]

    resp = await page.request.get(f"{console.url}/received/{uuid}/document.pdf")
    assert resp.status == 200 and (await resp.body()).startswith(b"%PDF")
    assert resp.headers["cache-control"] == "no-store" and "content-disposition" in resp.headers

    await page.goto(f"{console.url}/admin")
    assert "reception@example.com" in await page.text_content("main")
    await shot(page, "admin")

    # On a phone.
    await page.set_viewport_size({"width": 390, "height": 800})
    await page.goto(f"{console.url}/jobs/{job_id}")
    await shot(page, "job-phone")

    # Bob (a user with inbound 122) sees the fax but not admin's jobs; Carol sees neither.
    bob = await (await browser()).new_page()
    await log_in(bob, console.url, "bob@example.com")
    resp = await bob.goto(f"{console.url}/jobs/{job_id}")
    assert resp.status == 404
    resp = await bob.goto(f"{console.url}/jobs/{job_id}/document.pdf")
    assert resp.status == 404
    await bob.goto(f"{console.url}/jobs")
    assert await bob.locator("table.list tbody tr").count() == 0
    resp = await bob.goto(f"{console.url}/received/{uuid}")
    assert resp.status == 200
    resp = await bob.goto(f"{console.url}/admin")
    assert resp.status == 404
    carol = await (await browser()).new_page()
    await log_in(carol, console.url, "carol@example.com")
    resp = await carol.goto(f"{console.url}/received/{uuid}")
    assert resp.status == 404


async def test_csrf_and_headers(console, browser) -> None:  # type: ignore[no-untyped-def]
    page = await (await browser()).new_page()
    await log_in(page, console.url, "admin@example.com")
    resp = await page.goto(f"{console.url}/jobs")
    headers = resp.headers
    assert "script-src 'self'" in headers["content-security-policy"] and "unsafe-inline" not in headers["content-security-policy"]
    cookies = {c["name"]: c for c in await page.context.cookies()}
    session = cookies["gatewayd_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    # The browser's session, but no token in the form: refused, and nothing is queued.
    files = {"number": "+78123092631", "subject": "x", "note": "", "document": {"name": "a.pdf", "mimeType": "application/pdf", "buffer": sample_pdf()}}
    resp = await page.request.post(f"{console.url}/send", multipart=files, max_redirects=0)
    assert resp.status == 403
    resp = await page.request.post(f"{console.url}/send", multipart={**files, "csrf": "wrong"}, max_redirects=0)
    assert resp.status == 403
    assert await console.store.run(console.store.list_jobs) == []
    # With the page's token it goes through (the refusal above was the token's doing).
    await page.goto(f"{console.url}/send")
    token = await page.get_attribute("input[name=csrf]", "value")
    resp = await page.request.post(f"{console.url}/send", multipart={**files, "csrf": token}, max_redirects=0)
    assert resp.status == 303
    # Redirects carry the same headers as pages (docs/web.md).
    assert resp.headers["content-security-policy"] == headers["content-security-policy"]
    assert resp.headers["x-frame-options"] == "DENY" and resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["cache-control"] == "no-store"
    # Logout is a POST with the token too; afterwards the session is gone from the store.
    await page.goto(f"{console.url}/jobs")
    async with page.expect_navigation():
        await page.click("button:has-text('Log out')")
    assert page.url.endswith("/login")
    resp = await page.goto(f"{console.url}/jobs")
    assert page.url.endswith("/login")


async def test_wrong_passwords_are_throttled(console, browser) -> None:  # type: ignore[no-untyped-def]
    page = await (await browser()).new_page()
    for _ in range(5):
        await log_in(page, console.url, "bob@example.com", "wrong")
        assert "Wrong user name or password" in await page.text_content(".error")
    # The right password is now refused too, until the window passes.
    await log_in(page, console.url, "bob@example.com")
    assert "Too many failed logins" in await page.text_content(".error")
    assert page.url.endswith("/login")
    await shot(page, "login-throttled")
    # Without a browser: the same answer (429) for this address.
    async with httpx.AsyncClient(base_url=console.url) as client:
        r = await client.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
        r = await client.post("/login", data={"username": "admin@example.com", "password": PASSWORDS["admin@example.com"], "csrf": token})
        assert r.status_code == 429



DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


async def _send_page(console, browser):  # type: ignore[no-untyped-def]
    """Logged in as admin on /send: the page, its CSRF token and its accept= list."""
    page = await (await browser()).new_page()
    await log_in(page, console.url, "admin@example.com")
    await page.goto(f"{console.url}/send")
    return page, await page.get_attribute("input[name=csrf]", "value"), await page.get_attribute("input[name=document]", "accept")


def _docx_form(data: bytes) -> dict:
    return {"number": "+78123092631", "subject": "", "note": "", "document": {"name": "letter.docx", "mimeType": DOCX_TYPE, "buffer": data}}


async def test_send_takes_an_office_document(console, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    words = "Console albatross letter"
    docx = make_text_document(tmp_path, "docx", words)
    page, token, accept = await _send_page(console, browser)
    assert ".docx" in accept.split(","), accept
    empty = await page.request.post(f"{console.url}/send", multipart={"number": "+78123092631", "csrf": token}, max_redirects=0)
    assert "Choose at least one document (PDF, TIFF, JPEG, PNG, GIF, BMP, WEBP, Word, Excel, PowerPoint, OpenDocument, RTF, HTML or text)." in await empty.text()
    resp = await page.request.post(f"{console.url}/send", multipart={**_docx_form(docx), "csrf": token}, max_redirects=0)
    assert resp.status == 303, await resp.text()
    job_id = int(resp.headers["location"].rsplit("/", 1)[1])
    store = console.store
    events = await store.run(store.job_events, job_id)
    assert events[0].to_state == "converting"  # stored for the daemon's converter, as from email
    # The daemon's converter makes it into the fax.
    faxes = await wait_for(lambda: _faxes(console, job_id), timeout=180)
    assert words in " ".join(pdftotext(faxes[0].document, tmp_path).split())


async def _faxes(console, job_id: int):  # type: ignore[no-untyped-def]
    return [f for f in console.sim.sent_faxes() if f.filename == f"fax-{job_id}.pdf"]


@pytest.mark.parametrize("console_documents", [{"office": False}])
async def test_send_refuses_an_office_document_when_office_is_off(console, browser) -> None:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()  # a DOCX as sniff_office sees one: refused before anything reads it further
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("word/document.xml", "<w:document/>")
    page, token, accept = await _send_page(console, browser)
    assert ".docx" not in accept.split(","), accept
    empty = await page.request.post(f"{console.url}/send", multipart={"number": "+78123092631", "csrf": token}, max_redirects=0)
    assert "Choose at least one document (PDF, TIFF, JPEG, PNG, GIF, BMP or WEBP)." in await empty.text()
    resp = await page.request.post(f"{console.url}/send", multipart={**_docx_form(buf.getvalue()), "csrf": token}, max_redirects=0)
    assert resp.status == 400
    text = await resp.text()
    # The email path's words (tests/office/test_send_office.py compares them with an SMTP reply).
    assert f"no fax document: no attachment of a supported type (letter.docx: unsupported type {DOCX_TYPE})" in text, text
    assert await console.store.run(console.store.list_jobs) == []
