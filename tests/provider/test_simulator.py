"""The simulator itself: the seed's status table, validation, quotas, control API, CLI entry."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io

import httpx
import pytest

from gatewayd.provider.simulator import (
    LoggedRequest,
    ProviderSimulator,
    SimClock,
    main_simulator,
    parse_listen,
    run_simulator,
)

# The seed's status table: which actions each status allows, and the result.
STATUS_TABLE = {
    #  status          retry            cancel
    "ready_to_send": (None, "canceled"),
    "sending": (None, None),
    "sent": (None, None),
    "failed": ("ready_to_send", "canceled"),
    "canceled": (None, None),
    "error": (None, None),
}


async def _post_fax(raw: httpx.AsyncClient, pdf: bytes, dst: str = "74951112233", ext: int = 122) -> dict:
    resp = await raw.post(f"/extension/{ext}/fax/out/", data={"dst_num": dst}, files={"file": ("a.pdf", pdf, "application/pdf")})
    assert resp.status_code == 201, resp.text
    return resp.json()


async def _fax_in_status(sim: ProviderSimulator, raw: httpx.AsyncClient, clock: SimClock, pdf: bytes, status: str) -> int:
    dst = {"failed": "5550001", "error": "5550002"}.get(status, "5550000")
    sim.set_outcome("5550001", ["failed"])
    sim.set_outcome("5550002", ["error"])
    fax = await _post_fax(raw, pdf, dst)
    if status == "canceled":
        assert (await raw.put(f"/extension/122/fax/out/{fax['id']}", params={"action": "cancel"})).status_code == 200
    clock.advance({"ready_to_send": 0, "sending": 1.5, "canceled": 0}.get(status, 10))
    got = (await raw.get(f"/extension/122/fax/out/{fax['id']}")).json()
    assert got["status"] == status
    return fax["id"]


@pytest.mark.parametrize("status", list(STATUS_TABLE))
@pytest.mark.parametrize("action", ["retry", "cancel"])
async def test_status_table(sim, raw, sim_clock, pdf_bytes, status, action) -> None:
    fid = await _fax_in_status(sim, raw, sim_clock, pdf_bytes, status)
    expected = STATUS_TABLE[status][0 if action == "retry" else 1]
    resp = await raw.put(f"/extension/122/fax/out/{fid}", params={"action": action})
    if expected is None:
        assert resp.status_code == 409
        body = resp.json()
        assert body["status"] == "invalid_status" and status in body["message"]
        after = (await raw.get(f"/extension/122/fax/out/{fid}")).json()["status"]
        assert after == status  # unchanged
    else:
        assert resp.status_code == 200
        body = resp.json()
        assert body["status"] == expected and body["id"] == fid
        assert set(body) == {"datetime", "dst_num", "id", "status"}


async def test_action_validation(raw, pdf_bytes) -> None:
    fax = await _post_fax(raw, pdf_bytes)
    for params in ({}, {"action": "resend"}):
        resp = await raw.put(f"/extension/122/fax/out/{fax['id']}", params=params)
        assert resp.status_code == 400 and "message" in resp.json()
    resp = await raw.put("/extension/122/fax/out/99999", params={"action": "cancel"})
    assert resp.status_code == 404


async def test_outcome_rules_and_history(sim, raw, sim_clock, pdf_bytes) -> None:
    sim.set_outcome("111", ["failed", "failed", "sent"])
    fax = await _post_fax(raw, pdf_bytes, "111")
    sim_clock.advance(3)
    for attempt in (2, 3):
        assert (await raw.put(f"/extension/122/fax/out/{fax['id']}", params={"action": "retry"})).json()["status"] == "ready_to_send"
        sim_clock.advance(3)
    rec = sim.sent_fax(fax["id"])
    assert rec.status == "sent" and rec.attempt == 3
    assert [s for s, _ in rec.history] == [
        "ready_to_send", "sending", "failed",
        "ready_to_send", "sending", "failed",
        "ready_to_send", "sending", "sent",
    ]
    # history times follow the clock: ready 1 s, sending 2 s
    t = [when for _, when in rec.history]
    assert (t[1] - t[0]).total_seconds() == 1 and (t[2] - t[1]).total_seconds() == 2
    sim.set_outcome("222", ["failed"])  # the last rule repeats
    fax2 = await _post_fax(raw, pdf_bytes, "222")
    sim_clock.advance(3)
    await raw.put(f"/extension/122/fax/out/{fax2['id']}", params={"action": "retry"})
    sim_clock.advance(3)
    assert sim.sent_fax(fax2["id"]).status == "failed"
    with pytest.raises(ValueError):
        sim.set_outcome("333", ["maybe"])


async def test_unreadable_document_ends_in_error(sim, raw, sim_clock) -> None:
    fax = await _post_fax(raw, b"%PDF-1.4 this is not really a pdf")
    sim_clock.advance(10)
    rec = sim.sent_fax(fax["id"])
    assert rec.pages is None and rec.status == "error"


async def test_send_validation(sim, raw, pdf_bytes) -> None:
    url = "/extension/122/fax/out/"
    cases = [
        (dict(files={"file": ("a.pdf", pdf_bytes)}), 400),  # no dst_num
        (dict(data={"dst_num": "123"}, files={"other": ("a", b"x")}), 400),  # no file
        (dict(data={"dst_num": "12 34"}, files={"file": ("a.pdf", pdf_bytes)}), 400),
        (dict(data={"dst_num": "123"}, files={"file": ("a.png", b"\x89PNG\r\n\x1a\n")}), 400),
        (dict(data={"dst_num": "123"}, files={"file": ("a.pdf", b"%PDF-" + b"0" * 10_000_000)}), 413),
        (dict(json={"dst_num": "123"}), 400),  # not multipart
    ]
    for kw, status in cases:
        resp = await raw.post(url, **kw)
        assert resp.status_code == status, (kw.keys(), resp.text)
        assert resp.json()["message"]
    assert sim.sent == {}
    assert (await raw.post("/extension/100/fax/out/", data={"dst_num": "1"}, files={"file": ("a.pdf", pdf_bytes)})).status_code == 404
    sim.add_extension(130, status="blocked")
    resp = await raw.post("/extension/130/fax/out/", data={"dst_num": "123"}, files={"file": ("a.pdf", pdf_bytes)})
    assert resp.status_code == 403


async def test_send_answer_shape(raw, pdf_bytes) -> None:
    body = await _post_fax(raw, pdf_bytes)
    assert set(body) == {"datetime", "dst_num", "id", "status"}
    assert body["status"] == "ready_to_send" and body["dst_num"] == "74951112233"
    assert len(body["datetime"]) == 19 and body["datetime"][10] == " "
    listed = (await raw.get("/extension/122/fax/out/")).json()
    assert listed == [body]


async def test_not_found_answers(raw, pdf_bytes) -> None:
    fax = await _post_fax(raw, pdf_bytes)
    for path in (
        "/extension/123/fax/out/" + str(fax["id"]),  # another extension's fax
        "/extension/122/fax/out/abc",
        "/extension/9/fax/",
        "/extension/100/fax/",  # a phone extension
        "/client/13/extension/",
        "/no/such/path",
    ):
        resp = await raw.get(path)
        assert resp.status_code == 404, path
        assert resp.json()["message"]


async def test_tokens(sim, sim_clock) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        form = {"grant_type": "client_credentials", "client_id": "demo", "client_secret": "demo"}
        assert (await http.post(sim.token_url, data={**form, "client_secret": "x"})).status_code == 401
        assert (await http.post(sim.token_url, data={**form, "grant_type": "password"})).status_code == 400
        resp = await http.post(sim.token_url, data=form)
        body = resp.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
        auth = {"Authorization": "Bearer " + body["access_token"]}
        assert (await http.get("/user")).status_code == 401
        assert (await http.get("/user", headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await http.get("/user", headers=auth)).json() == {
            "client_id": 12, "extension_id": None, "timezone": "Europe/Moscow", "access": "full"
        }
        sim_clock.advance(3599)
        assert (await http.get("/user", headers=auth)).status_code == 200
        sim_clock.advance(1)
        resp = await http.get("/user", headers=auth)
        assert resp.status_code == 401 and resp.json()["message"]


async def test_extension_list_filters_and_pages(raw) -> None:
    everything = (await raw.get("/client/@me/extension/")).json()
    assert [(e["id"], e["type"]) for e in everything] == [(100, "phone"), (122, "fax"), (123, "fax")]
    fax = (await raw.get("/client/12/extension/", params={"type": "fax", "status": "active"})).json()
    assert [e["name"] for e in fax] == ["000*122", "000*123"]
    assert set(fax[0]) == {"id", "name", "label", "type", "status", "extension_group_id", "client_id"}
    page2 = (await raw.get("/client/12/extension/", params={"page": 2, "per_page": 2})).json()
    assert [e["id"] for e in page2] == [123]
    assert (await raw.get("/client/12/extension/", params={"page": 0})).status_code == 400
    one = (await raw.get("/client/@me/extension/122")).json()
    assert one["id"] == 122


async def test_fax_mailto_validation(raw, sim) -> None:
    assert (await raw.put("/extension/123/fax/", content=b"nope")).status_code == 400
    assert (await raw.put("/extension/123/fax/", json={"other": 1})).status_code == 400
    assert (await raw.put("/extension/123/fax/", json={"fax_mailto": 5})).status_code == 400
    resp = await raw.put("/extension/123/fax/", json={"fax_mailto": "admin@host.com,user@host.com"})
    assert resp.json() == {"fax_mailto": "admin@host.com,user@host.com"}  # the seed's example


async def test_received_list_download_delete(sim, raw, pdf_bytes, tiff_bytes) -> None:
    import datetime as dt

    tz = sim.tz
    base = dt.datetime(2025, 1, 10, 8, 0, 0, tzinfo=tz)
    uuids = [sim.inject_received(122, pdf_bytes, when=base + dt.timedelta(minutes=i)) for i in range(5)]
    tiff_uuid = sim.inject_received(122, tiff_bytes, when=base + dt.timedelta(minutes=10))
    q = {"start_datetime": "2025-01-10 08:01:00", "end_datetime": "2025-01-10 08:03:00", "order": "asc"}
    got = (await raw.get("/extension/122/fax/in/", params=q)).json()
    assert [g["uuid"] for g in got] == uuids[1:4]  # both bounds inclusive
    assert got[0] == {
        "caller_id": "74951234567", "client_id": 12, "datetime": "2025-01-10 08:01:00",
        "destination": "78123092631", "extension_group_id": None, "extension_id": 122,
        "file_size": len(pdf_bytes), "uuid": uuids[1],
    }
    desc = (await raw.get("/extension/122/fax/in/", params={**q, "order": "desc"})).json()
    assert [g["uuid"] for g in desc] == uuids[3:0:-1]
    paged = (await raw.get("/extension/122/fax/in/", params={"page": 2, "per_page": 4})).json()
    assert [g["uuid"] for g in paged] == [uuids[4], tiff_uuid]
    assert (await raw.get("/extension/122/fax/in/", params={"start_datetime": "yesterday"})).status_code == 400
    assert (await raw.get("/extension/122/fax/in/", params={"order": "sideways"})).status_code == 400
    assert (await raw.get("/extension/123/fax/in/")).json() == []
    resp = await raw.get(f"/extension/122/fax/in/{tiff_uuid}")
    assert resp.content == tiff_bytes and resp.headers["content-type"] == "image/tiff"
    assert (await raw.get(f"/extension/123/fax/in/{tiff_uuid}")).status_code == 404
    assert (await raw.delete(f"/extension/122/fax/in/{tiff_uuid}")).status_code == 204
    assert (await raw.get(f"/extension/122/fax/in/{tiff_uuid}")).status_code == 404


async def test_gzip_when_asked(sim, raw) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url, headers=raw.headers) as http:
        req = http.build_request("GET", "/client/12/extension/", headers={"Accept-Encoding": "gzip"})
        resp = await http.send(req, stream=True)
        assert resp.headers.get("content-encoding") == "gzip"
        raw_body = b"".join([chunk async for chunk in resp.aiter_raw()])
        await resp.aclose()
    assert gzip.decompress(raw_body).startswith(b"[")


async def test_hourly_limit_headers_and_window(sim_clock) -> None:
    async with run_simulator(hourly_limit=2, clock=sim_clock, token_ttl=86400) as sim:
        async with httpx.AsyncClient(base_url=sim.base_url) as http:
            tok = (await http.post(sim.token_url, data={"grant_type": "client_credentials", "client_id": "demo", "client_secret": "demo"})).json()
            http.headers["Authorization"] = "Bearer " + tok["access_token"]
            r1 = await http.get("/user")
            assert r1.headers["X-RateLimit-Limit"] == "2" and r1.headers["X-RateLimit-Remaining"] == "1"
            assert r1.headers["X-RateLimit-Reset"] == "3600"
            await http.get("/user")
            sim_clock.advance(600)
            r3 = await http.get("/user")
            assert r3.status_code == 429
            assert r3.json()["status"] == "rate_limit_exceeded" and r3.json()["message"]
            assert r3.headers["X-RateLimit-Remaining"] == "0" and r3.headers["X-RateLimit-Reset"] == "3000"
            sim_clock.advance(3000)
            assert (await http.get("/user")).status_code == 200


async def test_fault_kinds_and_request_log(sim, raw, pdf_bytes) -> None:
    sim.fail_next(1, "/user", status=502)
    assert (await raw.get("/user")).status_code == 502
    assert (await raw.get("/user")).status_code == 200  # count used up
    sim.rate_limit_next(7, path="/user")
    resp = await raw.get("/user")
    assert resp.status_code == 429 and resp.headers["X-RateLimit-Reset"] == "7"
    sim.add_fault("/user", drop=True)
    with pytest.raises(httpx.RemoteProtocolError):
        await raw.get("/user")
    sim.add_fault("/user", method="POST", status=500)  # method does not match GET
    assert (await raw.get("/user")).status_code == 200
    assert sim.request_log[-2:] == [
        LoggedRequest("GET", "/user", None, sim.request_log[-2].time),
        LoggedRequest("GET", "/user", 200, sim.request_log[-1].time),
    ]
    assert sim.count_requests("GET", "/user") == 5
    sim.clear_faults()
    assert sim.faults == []


async def test_latency_fault(sim, raw) -> None:
    sim.add_latency(0.3, "/user", count=1)
    with pytest.raises(httpx.ReadTimeout):
        await raw.get("/user", timeout=0.1)


# ----------------------------------------------------------------- control API
async def test_control_inbound_multipart_and_json(sim, control, raw, pdf_bytes, tiff_bytes) -> None:
    resp = await control.post(
        "/inbound",
        data={"extension_id": "123", "caller_id": "1844*001", "datetime": "2025-02-03 04:05:06"},
        files={"file": ("in.pdf", pdf_bytes, "application/pdf")},
    )
    assert resp.status_code == 201
    u1 = resp.json()["uuid"]
    rec = sim.received[u1]
    assert (rec.extension_id, rec.caller_id, rec.data) == (123, "1844*001", pdf_bytes)
    assert rec.datetime.strftime("%Y-%m-%d %H:%M:%S") == "2025-02-03 04:05:06"
    resp = await control.post(
        "/inbound",
        json={"data_base64": base64.b64encode(tiff_bytes).decode(), "destination": "78120000000",
              "content_type": "application/octet-stream"},
    )
    assert resp.status_code == 201 and resp.json()["extension_id"] == 122  # first fax extension
    u2 = resp.json()["uuid"]
    dl = await raw.get(f"/extension/122/fax/in/{u2}")
    assert dl.content == tiff_bytes and dl.headers["content-type"] == "application/octet-stream"
    listed = (await control.get("/received")).json()
    assert {r["uuid"] for r in listed} == {u1, u2}
    for bad in ({"data_base64": "!!!"}, {"data_base64": ""}, {"data_base64": "JVBERi0=", "extension_id": 999}):
        assert (await control.post("/inbound", json=bad)).status_code == 400


async def test_control_sent_faults_outcomes_reset_clock(sim, control, raw, pdf_bytes, tiff_bytes) -> None:
    resp = await control.post("/outcomes", json={"dst_num": "111", "outcomes": ["failed", "sent"]})
    assert resp.json() == {"111": ["failed", "sent"]}
    assert (await control.post("/outcomes", json={"dst_num": "111", "outcomes": ["bad"]})).status_code == 400
    await _post_fax(raw, pdf_bytes, "111")
    await _post_fax(raw, tiff_bytes, "222", ext=123)
    resp = await control.post("/clock", json={"advance": 3})
    assert resp.status_code == 200 and "datetime" in resp.json()
    sent = (await control.get("/sent")).json()
    assert [(s["dst_num"], s["kind"], s["pages"], s["status"], s["size"]) for s in sent] == [
        ("111", "pdf", 2, "failed", len(pdf_bytes)),
        ("222", "tiff", 3, "sent", len(tiff_bytes)),
    ]
    import hashlib

    assert sent[0]["sha256"] == hashlib.sha256(pdf_bytes).hexdigest()
    assert [h["status"] for h in sent[0]["history"]] == ["ready_to_send", "sending", "failed"]

    resp = await control.post("/faults", json={"path": "/extension/*/fax/out/", "method": "POST", "status": 503, "count": 1})
    assert resp.status_code == 201 and resp.json()["status"] == 503
    assert (await control.post("/faults", json={"nonsense": 1})).status_code == 400
    assert len((await control.get("/faults")).json()) == 1
    r = await raw.post("/extension/122/fax/out/", data={"dst_num": "1"}, files={"file": ("a.pdf", pdf_bytes)})
    assert r.status_code == 503
    await control.post("/faults", json={"path": "*", "status": 500, "count": None})
    assert (await control.delete("/faults")).status_code == 204
    assert (await raw.get("/user")).status_code == 200

    reqs = (await control.get("/requests")).json()
    assert reqs and set(reqs[0]) == {"method", "path", "status", "time"}
    assert (await control.post("/extensions", json={"id": 150, "fax_mailto": "x@y.test"})).status_code == 201
    assert 150 in sim.extensions
    assert (await control.post("/expire_tokens")).status_code == 204
    assert (await raw.get("/user")).status_code == 401
    assert (await control.post("/reset")).status_code == 204
    assert sim.sent == {} and sim.request_log == [] and 150 not in sim.extensions and sim.outcomes == {}
    assert sorted(sim.extensions) == [100, 122, 123]


async def test_control_api_is_not_logged_or_faulted(sim, control) -> None:
    sim.fail_next(5, "*")
    assert (await control.get("/sent")).status_code == 200
    assert sim.request_log == []


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9") == ("::1", 9)
    for bad in ("8080", "host:", ":80", "h:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)


async def test_main_simulator_prints_and_serves(pdf_bytes) -> None:
    out = io.StringIO()
    task = asyncio.create_task(main_simulator("127.0.0.1:0", "cid", "csecret", out=out))
    try:
        for _ in range(200):
            if "token_url" in out.getvalue():
                break
            await asyncio.sleep(0.01)
        text = out.getvalue()
        lines = dict(
            (k.strip(), v.strip()) for k, _, v in (line.partition("=") for line in text.splitlines()) if v
        )
        assert lines["client_id"] == "cid" and lines["client_secret"] == "csecret"
        assert lines["base_url"].startswith("http://127.0.0.1:") and lines["base_url"].endswith("/api/ver1.0")
        from gatewayd.provider.client import ProviderClient

        async with ProviderClient(lines["base_url"], lines["token_url"], "cid", "csecret") as client:
            assert [e.id for e in await client.list_fax_extensions()] == [122, 123]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_simulator_context_manager_and_urls() -> None:
    sim = ProviderSimulator()
    async with sim:
        assert sim.base_url == sim.url + "/api/ver1.0"
        assert sim.token_url == sim.url + "/oauth/token"
        assert sim.url.startswith("http://127.0.0.1:")
    with pytest.raises(ValueError):
        SimClock().advance(-1)
