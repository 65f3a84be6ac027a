"""Each recipient's own cover page (its number and name, never the others'),
the attachments stored once, the office's [cover] look and contacts
(<alias>@<fax domain>), over real SMTP to the provider simulator; the faxes
are read back with poppler's pdftotext."""

from __future__ import annotations

from pathlib import Path

from support.corpus import good_message, make_pdf, pdftotext
from support.e2f import DOMAIN, NUMBER_1, NUMBER_2, RawSMTP, load, merge, pdfinfo, run_gateway, wait_for
from PIL import Image

from gatewayd.email_to_fax.policy import contact_problems
from gatewayd.documents.cover import CJK_FONT_PATH

CONTACT_NUMBER = "+78123090001"
CONTACTS = [{"alias": "lab", "name": "City Lab", "number": "+7 812 309-00-01"}]


def first_page_text(pdf: bytes, tmp_path: Path) -> str:
    return pdftotext(pdf, tmp_path).split("\f")[0]


def submitted(gw, ids: list[int]) -> bool:
    return all(gw.store.get_job(i).state == "submitted" for i in ids)


async def test_each_recipient_gets_its_own_cover_and_the_attachment_is_stored_once(tmp_path: Path, sim_data: dict, sim) -> None:
    data = merge(sim_data, {"documents": {"cover_page": "always"}, "contacts": CONTACTS})
    raw = good_message([("invoice.pdf", "application/pdf", make_pdf(2, text="Invoice body"))], subject="Invoice 42",
                       to_addrs=(f"Anna Smith <{NUMBER_1}@{DOMAIN}>", f"Boris Ivanov <{NUMBER_2}@{DOMAIN}>"))
    async with run_gateway(load(tmp_path, data), sim=sim, sender=True) as gw:
        c = await RawSMTP.connect(gw.port)
        _, rcpts, reply = await c.send(raw, recipients=(f"{NUMBER_1}@{DOMAIN}", f"{NUMBER_2}@{DOMAIN}", f"LAB@{DOMAIN}"))
        await c.close()
        assert rcpts == ["250 2.1.5 recipient ok"] * 3 and reply.startswith("250 2.0.0 queued as"), (rcpts, reply)
        jobs = gw.jobs()
        ids = [j.id for j in jobs]
        # The attachments once, each recipient's cover apart.
        assert len({j.document for j in jobs}) == 1
        assert len({j.cover for j in jobs}) == 3 and all(j.cover for j in jobs)
        stored = [p for p in (gw.store.documents_dir).rglob("*.pdf")]
        assert len(stored) == 4
        assert [j.pages for j in jobs] == [3, 3, 3]
        await wait_for(lambda: submitted(gw, ids), what="three faxes submitted")
    faxes = {f.dst_num: f for f in sim.sent_faxes()}
    expected = {
        NUMBER_1[1:]: (NUMBER_1, "Anna Smith"),
        NUMBER_2[1:]: (NUMBER_2, "Boris Ivanov"),
        CONTACT_NUMBER[1:]: (CONTACT_NUMBER, "City Lab"),
    }
    assert set(faxes) == set(expected)
    for dst, (number, name) in expected.items():
        fax = faxes[dst]
        assert pdfinfo(fax.document, tmp_path, f"f{fax.id}.pdf")["Pages"] == "3"
        cover = first_page_text(fax.document, tmp_path)
        assert number in cover and name in cover, cover
        for other_number, other_name in expected.values():
            if other_number != number:
                assert other_number not in cover and other_name not in cover, cover
        assert "3 including this cover" in cover
        assert "Invoice body" in pdftotext(fax.document, tmp_path)


async def test_a_message_without_attachments_is_each_recipients_cover_alone(tmp_path: Path, sim_data: dict, sim) -> None:
    raw = good_message([], body="Please call me back.")
    async with run_gateway(load(tmp_path, sim_data), sim=sim, sender=True) as gw:
        c = await RawSMTP.connect(gw.port)
        _, _, reply = await c.send(raw, recipients=(f"{NUMBER_1}@{DOMAIN}", f"{NUMBER_2}@{DOMAIN}"))
        await c.close()
        assert reply.startswith("250 2.0.0 queued as"), reply
        jobs = gw.jobs()
        assert len({j.document for j in jobs}) == 2 and not any(j.cover for j in jobs)
        await wait_for(lambda: submitted(gw, [j.id for j in jobs]), what="both faxes submitted")
    for fax in sim.sent_faxes():
        text = pdftotext(fax.document, tmp_path)
        mine, other = (NUMBER_1, NUMBER_2) if fax.dst_num == NUMBER_1[1:] else (NUMBER_2, NUMBER_1)
        assert mine in text and other not in text and "Please call me back." in text


async def test_the_office_cover_and_the_page_header(tmp_path: Path, sim_data: dict, sim) -> None:
    assert CJK_FONT_PATH.is_file(), f"{CJK_FONT_PATH} is missing: install fonts-wqy-zenhei (make test-deps)"
    logo = tmp_path / "logo.png"
    Image.new("RGB", (240, 80), "navy").save(logo)
    data = merge(sim_data, {
        "documents": {"cover_page": "always", "header": "{organisation} {phone} | to {to} | page {page}/{pages}"},
        "cover": {"organisation": "Smith & Partners LLP", "phone": "+1 555 0100", "logo": str(logo),
                  "notice": "CONFIDENTIAL: for the named recipient only."},
    })
    raw = good_message([("a.pdf", "application/pdf", make_pdf(2, text="Body page"))], subject="請求書 42",
                       body="你好，世界. 안녕하세요. こんにちは.")
    async with run_gateway(load(tmp_path, data), sim=sim, sender=True) as gw:
        c = await RawSMTP.connect(gw.port)
        _, _, reply = await c.send(raw)
        await c.close()
        assert reply.startswith("250 2.0.0 queued as"), reply
        await wait_for(lambda: submitted(gw, [j.id for j in gw.jobs()]), what="the fax submitted")
    (fax,) = sim.sent_faxes()
    pages = pdftotext(fax.document, tmp_path).split("\f")
    cover = pages[0]
    for text in ("Smith & Partners LLP", "+1 555 0100", "CONFIDENTIAL: for the named recipient only.", "請求書 42",
                 "你好，世界", "안녕하세요", "こんにちは", "Pages:", "Subject:", "Date:", "From:", "To:"):
        assert text in cover, (text, cover)
    for number, page in enumerate(pages[:3], start=1):
        assert f"Smith & Partners LLP +1 555 0100 | to {NUMBER_1} | page {number}/3" in page, page


async def test_contacts_addressing(tmp_path: Path, data: dict) -> None:
    data = merge(data, {"contacts": CONTACTS + [{"alias": "front-desk", "name": "Front desk", "number": "1234"}]})
    raw = good_message([("a.pdf", "application/pdf", make_pdf(1))])
    async with run_gateway(load(tmp_path, data)) as gw:
        c = await RawSMTP.connect(gw.port)
        _, rcpts, reply = await c.send(raw, recipients=(f"Lab@{DOMAIN}", f"front-desk@{DOMAIN}", f"nobody@{DOMAIN}", "lab@elsewhere.example"))
        await c.close()
        assert rcpts == ["250 2.1.5 recipient ok", "250 2.1.5 recipient ok",
                         f"553 5.1.3 <nobody@{DOMAIN}>: not a fax number", "550 5.7.1 relaying denied"]
        assert reply.startswith("250 2.0.0 queued as")
        assert [(j.number, j.dst_num) for j in gw.jobs()] == [(CONTACT_NUMBER, CONTACT_NUMBER[1:]), ("1234", "1234")]


async def test_a_contact_goes_through_the_number_policy(tmp_path: Path, data: dict) -> None:
    # Named by check-config (and refused at start and on reload), and refused
    # at RCPT all the same: a contact never becomes a way around numbers.deny.
    config = load(tmp_path, merge(data, {"contacts": CONTACTS, "numbers": {"deny": ["+7812309"]}}))
    assert contact_problems(config) == ["contacts[0].number: +78123090001: destination not allowed"]
    async with run_gateway(config) as gw:
        c = await RawSMTP.connect(gw.port)
        _, rcpts, _ = await c.send(good_message([("a.pdf", "application/pdf", make_pdf(1))]), recipients=(f"lab@{DOMAIN}",))
        await c.close()
    assert rcpts[0].startswith("550 5.7.1") and "destination not allowed" in rcpts[0], rcpts
