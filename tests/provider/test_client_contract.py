"""Contract tests: every client method against the simulator over a real socket."""

from __future__ import annotations

import datetime as dt
import hashlib
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from gatewayd.filekinds import fax_file_kind
from gatewayd.provider.client import (
    INFERRED_PATHS,
    MAX_DOCUMENT_BYTES,
    PATHS,
    DocumentRefused,
    NotFound,
    ProviderClient,
    Rejected,
)
from gatewayd.provider.simulator import run_simulator

MSK = ZoneInfo("Europe/Moscow")
UTC = dt.timezone.utc


def test_paths_table_marks_inferred_paths() -> None:
    assert PATHS["fax_out"] == "/extension/{extension_id}/fax/out/"
    assert PATHS["fax_out_one"] == "/extension/{extension_id}/fax/out/{fax_id}"
    assert INFERRED_PATHS == {"fax_mailto", "fax_in", "fax_in_one"}
    assert all(k in PATHS for k in INFERRED_PATHS)
    import inspect

    import gatewayd.provider.paths as mod  # the table lives there (docs/provider.md)

    src = inspect.getsource(mod)
    for key in INFERRED_PATHS:
        line = next(line for line in src.splitlines() if f'"{key}": ' in line)
        assert "# inferred" in line, line


def test_fax_file_kind() -> None:
    assert fax_file_kind(b"%PDF-1.7\n") == "pdf"
    assert fax_file_kind(b"II*\x00rest") == "tiff"
    assert fax_file_kind(b"MM\x00*rest") == "tiff"
    assert fax_file_kind(b"\x89PNG\r\n") == "unknown"
    assert fax_file_kind(b"") == "unknown"


async def test_from_config(sim) -> None:
    cfg = SimpleNamespace(
        base_url=sim.base_url, token_url=sim.token_url, client_id="demo", client_secret="demo",
        timeout=dt.timedelta(seconds=3),
    )
    async with ProviderClient.from_config(cfg) as c:
        user = await c.get_user()
    assert user.client_id == 12


async def test_user_is_fetched_once_and_token_reused(client, sim) -> None:
    user = await client.get_user()
    assert (user.client_id, user.extension_id, user.timezone, user.access) == (12, None, "Europe/Moscow", "full")
    await client.get_user()
    await client.get_fax_mailto(122)
    await client.get_fax_mailto(123)
    assert sim.count_requests("GET", "/user") == 1
    assert sim.count_requests("POST", "/oauth/token") == 1
    assert sim.requests_without_gzip == 0  # Accept-Encoding: gzip on every request


async def test_list_fax_extensions_filters_type(client, sim) -> None:
    exts = await client.list_fax_extensions()
    assert [(e.id, e.name, e.type, e.status, e.client_id) for e in exts] == [
        (122, "000*122", "fax", "active", 12),
        (123, "000*123", "fax", "active", 12),
    ]
    assert sim.count_requests("GET", "/client/12/extension/") == 1


async def test_list_fax_extensions_paginates_and_skips_blocked(client, sim) -> None:
    for i in range(200, 450):
        sim.add_extension(i)
    sim.add_extension(999, status="blocked")
    exts = await client.list_fax_extensions()
    assert len(exts) == 252
    assert 999 not in {e.id for e in exts}
    assert sim.count_requests("GET", "/client/12/extension/") == 3  # 100 + 100 + 52


async def test_get_extension(client) -> None:
    ext = await client.get_extension(100)
    assert (ext.id, ext.type) == (100, "phone")
    with pytest.raises(NotFound):
        await client.get_extension(555)


async def test_fax_mailto_roundtrip(client, sim) -> None:
    assert await client.get_fax_mailto(122) == ["admin@example.test"]
    assert await client.get_fax_mailto(123) == []  # provider default null
    assert await client.set_fax_mailto(123, ["a@example.com", " b@example.org "]) == [
        "a@example.com", "b@example.org",
    ]
    assert sim.extensions[123].fax_mailto == "a@example.com,b@example.org"
    assert await client.get_fax_mailto(123) == ["a@example.com", "b@example.org"]
    assert await client.set_fax_mailto(123, []) == []
    assert sim.extensions[123].fax_mailto is None


async def test_fax_mailto_refusals(client, sim) -> None:
    with pytest.raises(ValueError):
        await client.set_fax_mailto(123, ["a@x.test,b@x.test"])  # a comma would split it
    with pytest.raises(TypeError):
        await client.set_fax_mailto(123, "a@x.test")  # type: ignore[arg-type]
    assert sim.count_requests("PUT") == 0
    with pytest.raises(Rejected) as exc:
        await client.set_fax_mailto(123, ["not-an-address"])
    assert exc.value.http_status == 400 and "Invalid e-mail" in (exc.value.message or "")
    with pytest.raises(NotFound):
        await client.get_fax_mailto(100)  # a phone extension has no fax settings


async def test_send_pdf(client, sim, sim_clock, pdf_bytes) -> None:
    fax = await client.send_fax(122, "74951112233", pdf_bytes, filename="scan.pdf")
    assert fax.status == "ready_to_send" and fax.dst_num == "74951112233" and fax.id >= 1
    assert fax.datetime is not None and fax.datetime.tzinfo is not None
    assert fax.datetime.utcoffset() == dt.timedelta(hours=3)
    (rec,) = sim.sent_faxes()
    assert rec.id == fax.id and rec.extension_id == 122 and rec.filename == "scan.pdf"
    assert rec.sha256 == hashlib.sha256(pdf_bytes).hexdigest()
    assert (rec.kind, rec.pages, rec.size) == ("pdf", 2, len(pdf_bytes))


async def test_send_tiff(client, sim, tiff_bytes, mktiff) -> None:
    await client.send_fax(123, "1234567", tiff_bytes, filename="f.tif")
    await client.send_fax(123, "1234567", mktiff(2, ">"))
    recs = sim.sent_faxes()
    assert [(r.kind, r.pages) for r in recs] == [("tiff", 3), ("tiff", 2)]


async def test_status_progression(client, sim_clock, pdf_bytes) -> None:
    fax = await client.send_fax(122, "74951112233", pdf_bytes)
    assert (await client.get_sent_fax(122, fax.id)).status == "ready_to_send"
    sim_clock.advance(1.0)
    assert (await client.get_sent_fax(122, fax.id)).status == "sending"
    sim_clock.advance(2.0)
    got = await client.get_sent_fax(122, fax.id)
    assert got.status == "sent" and got.final
    assert got.datetime == fax.datetime  # the creation time stays


async def test_list_sent_faxes_since_and_paging(client, sim, sim_clock, pdf_bytes) -> None:
    first = await client.send_fax(122, "111", pdf_bytes)
    sim_clock.advance(3600)
    ids = [(await client.send_fax(122, "222", pdf_bytes)).id for _ in range(104)]
    await client.send_fax(123, "333", pdf_bytes)  # another extension
    all_faxes = await client.list_sent_faxes(122)
    assert [f.id for f in all_faxes] == [first.id, *ids]
    assert sim.count_requests("GET", "/extension/122/fax/out/") == 2
    since = first.datetime + dt.timedelta(minutes=30)
    recent = await client.list_sent_faxes(122, since=since)
    assert [f.id for f in recent] == ids
    with pytest.raises(ValueError):
        await client.list_sent_faxes(122, since=dt.datetime(2020, 1, 1))  # naive


async def test_retry_and_cancel(client, sim, sim_clock, pdf_bytes) -> None:
    sim.set_outcome("5550001", ["failed", "sent"])
    fax = await client.send_fax(122, "5550001", pdf_bytes)
    sim_clock.advance(3)
    assert (await client.get_sent_fax(122, fax.id)).status == "failed"
    again = await client.retry_fax(122, fax.id)
    assert again.status == "ready_to_send" and again.id == fax.id
    sim_clock.advance(3)
    assert (await client.get_sent_fax(122, fax.id)).status == "sent"

    other = await client.send_fax(122, "5550002", pdf_bytes)
    canceled = await client.cancel_fax(122, other.id)
    assert canceled.status == "canceled"
    with pytest.raises(Rejected) as exc:
        await client.retry_fax(122, other.id)
    assert exc.value.http_status == 409 and exc.value.status == "invalid_status"
    assert "canceled" in (exc.value.message or "")


async def test_not_found(client, pdf_bytes) -> None:
    with pytest.raises(NotFound):
        await client.get_sent_fax(122, 9999)
    fax = await client.send_fax(122, "123", pdf_bytes)
    with pytest.raises(NotFound):
        await client.get_sent_fax(123, fax.id)  # another extension's fax
    with pytest.raises(NotFound):
        await client.list_sent_faxes(777)


async def test_received_window_and_fields(client, sim, pdf_bytes) -> None:
    t0 = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=MSK)
    u1 = sim.inject_received(122, pdf_bytes, caller_id="1844*001", when=t0)
    u2 = sim.inject_received(122, pdf_bytes, when=t0 + dt.timedelta(minutes=5))
    sim.inject_received(122, pdf_bytes, when=t0 + dt.timedelta(hours=2))  # outside
    sim.inject_received(123, pdf_bytes, when=t0)  # other extension
    # The window is given in UTC; the client converts it to the account's zone.
    start = t0.astimezone(UTC)
    got = await client.list_received_faxes(122, start, start + dt.timedelta(minutes=10))
    assert [f.uuid for f in got] == [u1, u2]
    f = got[0]
    assert (f.caller_id, f.client_id, f.destination, f.extension_id, f.file_size) == (
        "1844*001", 12, "78123092631", 122, len(pdf_bytes)
    )
    assert f.extension_group_id is None
    assert f.datetime == t0
    q = sim.request_log[-1]
    assert q.path == "/extension/122/fax/in/"
    with pytest.raises(ValueError):
        await client.list_received_faxes(122, dt.datetime(2025, 1, 1), dt.datetime(2025, 1, 2))


async def test_received_in_another_timezone(pdf_bytes) -> None:
    async with run_simulator(timezone="Asia/Vladivostok") as sim:
        async with ProviderClient(sim.base_url, sim.token_url, "demo", "demo") as client:
            when = dt.datetime(2025, 6, 1, 9, 30, tzinfo=ZoneInfo("Asia/Vladivostok"))
            uuid = sim.inject_received(122, pdf_bytes, when=when)
            start = dt.datetime(2025, 5, 31, 23, 29, tzinfo=UTC)  # 09:29 Vladivostok
            got = await client.list_received_faxes(122, start, start + dt.timedelta(minutes=2))
            assert [f.uuid for f in got] == [uuid]
            assert got[0].datetime == when
            assert (await client.get_user()).timezone == "Asia/Vladivostok"


async def test_download_by_magic_not_content_type(client, sim, tiff_bytes, pdf_bytes) -> None:
    u_tiff = sim.inject_received(122, tiff_bytes, content_type="application/octet-stream")
    u_pdf = sim.inject_received(122, pdf_bytes)
    u_junk = sim.inject_received(122, b"GIF89a....", content_type="application/pdf")
    f = await client.download_received_fax(122, u_tiff)
    assert (f.kind, f.content_type, f.data) == ("tiff", "application/octet-stream", tiff_bytes)
    f = await client.download_received_fax(122, u_pdf)
    assert (f.kind, f.content_type) == ("pdf", "application/pdf")
    f = await client.download_received_fax(122, u_junk)
    assert f.kind == "unknown"


async def test_delete_received(client, sim, pdf_bytes) -> None:
    uuid = sim.inject_received(122, pdf_bytes)
    assert await client.delete_received_fax(122, uuid) is None
    assert uuid not in sim.received
    with pytest.raises(NotFound):
        await client.download_received_fax(122, uuid)
    with pytest.raises(NotFound):
        await client.delete_received_fax(122, uuid)


@pytest.mark.parametrize(
    "document, reason",
    [
        (b"%PDF-1.4\n" + b"0" * MAX_DOCUMENT_BYTES, "too_large"),
        (b"\x89PNG\r\n\x1a\n" + b"0" * 100, "unsupported_type"),
        (b"", "unsupported_type"),
        (b"GIF89a", "unsupported_type"),
    ],
)
async def test_document_refused_locally(client, sim, document, reason) -> None:
    with pytest.raises(DocumentRefused) as exc:
        await client.send_fax(122, "74951112233", document)
    assert exc.value.reason == reason
    assert sim.request_log == []  # not even a token was asked for
    assert sim.sent_faxes() == []


async def test_document_at_exact_limit_is_sent(client, sim) -> None:
    doc = b"%PDF-1.4\n" + b"0" * (MAX_DOCUMENT_BYTES - 9)
    assert len(doc) == MAX_DOCUMENT_BYTES
    fax = await client.send_fax(122, "74951112233", doc)
    assert fax.status == "ready_to_send"
    (rec,) = sim.sent_faxes()
    assert rec.size == MAX_DOCUMENT_BYTES and rec.pages is None  # not a real PDF


async def test_on_request_and_health(make_client, sim, cclock) -> None:
    seen: list[tuple[str, str, int | None, float]] = []
    client = make_client(on_request=lambda *a: seen.append(a))
    assert client.last_success_at is None
    await client.get_fax_mailto(122)
    assert [(m, p, s) for m, p, s, _ in seen] == [
        ("POST", "/oauth/token", 200),
        ("GET", "/extension/{extension_id}/fax/", 200),
    ]
    assert all(isinstance(sec, float) and sec >= 0 for *_, sec in seen)
    assert client.last_success_at == cclock.now and client.last_error is None


async def test_on_request_exception_does_not_break_calls(make_client) -> None:
    def boom(*_a: object) -> None:
        raise RuntimeError("metrics down")

    client = make_client(on_request=boom)
    assert await client.get_fax_mailto(122) == ["admin@example.test"]
