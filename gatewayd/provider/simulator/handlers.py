"""The provider simulator's REST API: the same paths and answers as the real provider, with injected faults applied (docs/provider.md, Behaviour)."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import secrets
from typing import Any

import structlog
from aiohttp import web

from gatewayd.provider.simulator.faults import Fault, drop_connection, take_fault
from gatewayd.provider.simulator.model import (
    API_PREFIX,
    MAX_FILE_BYTES,
    RATE_WINDOW,
    LoggedRequest,
    SimAccount,
    SimExtension,
    SimReceivedFax,
    SimSentFax,
    count_pages,
    file_kind,
)

log = structlog.get_logger(__name__)

_DST_NUM = re.compile(r"^[0-9*#+]{2,32}$")

__all__ = ["ApiHandlers", "ApiRefusal", "json_error", "paginate"]


def json_error(status: int, message: str, word: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message}
    if word:
        body["status"] = word
    return web.json_response(body, status=status, headers=headers)


class ApiRefusal(Exception):
    """An API error answer raised from a helper (extension, fax, page not found or
    malformed); the API middleware sends ``response``."""

    def __init__(self, status: int, message: str, word: str | None = None) -> None:
        super().__init__(message)
        self.response = json_error(status, message, word)


def paginate(query: Any, rows: list[Any]) -> list[Any]:
    """page/per_page like the provider's other lists; absent = everything."""
    if "page" not in query and "per_page" not in query:
        return rows
    try:
        page = int(query.get("page", 1))
        per_page = int(query.get("per_page", 100))
    except ValueError:
        raise ApiRefusal(400, "page and per_page must be integers") from None
    if page < 1 or not 1 <= per_page <= 1000:
        raise ApiRefusal(400, "page must be >= 1 and per_page between 1 and 1000")
    return rows[(page - 1) * per_page : page * per_page]


class ApiHandlers(SimAccount):
    """The provider's REST API over the account: fault and API middleware and one handler per path."""

    # ------------------------------------------------------------ middleware
    def _rel(self, path: str) -> str:
        return path[len(API_PREFIX):] if path.startswith(API_PREFIX + "/") else path

    def _take_fault(self, method: str, path: str) -> Fault | None:
        return take_fault(self.faults, method, path)

    @web.middleware
    async def _fault_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            return await handler(request)
        path = self._rel(request.path)
        arrived = self.clock.now()
        status: int | None = None
        if "gzip" not in request.headers.get("Accept-Encoding", ""):
            self.requests_without_gzip += 1
        try:
            fault = self._take_fault(request.method, path)
            if fault is not None:
                if fault.latency:
                    await asyncio.sleep(fault.latency)
                if fault.drop:
                    drop_connection(request)
                    return web.Response(status=500)  # never written: the transport is closed
                if fault.rate_limit_reset is not None:
                    headers = self._limit_headers(remaining=0, reset=fault.rate_limit_reset)
                    status = 429
                    return json_error(429, "Rate limit exceeded", "rate_limit_exceeded", headers)
                if fault.status is not None:
                    status = fault.status
                    return json_error(fault.status, fault.message or f"Simulated error {fault.status}")
            try:
                resp = await handler(request)
            except web.HTTPException as exc:  # router 404/405: the API answers JSON
                resp = json_error(exc.status, exc.reason)
            if fault is not None and fault.answer_latency:
                await asyncio.sleep(fault.answer_latency)
            if fault is not None and fault.commit_then_drop:
                drop_connection(request)
                return resp
            status = resp.status
            return resp
        finally:
            self.request_log.append(LoggedRequest(request.method, path, status, arrived))

    @web.middleware
    async def _api_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Bearer token and hourly quota for /api/ver1.0; gzip like the provider."""
        if not request.path.startswith(API_PREFIX + "/"):
            return await handler(request)
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        expiry = self.tokens.get(token)
        if expiry is None or self.clock.now() >= expiry:
            self.tokens.pop(token, None)
            return json_error(401, "Invalid or expired access token")
        headers: dict[str, str] = {}
        if self.hourly_limit is not None:
            now = self.clock.now()
            if self._window_start is None or now >= self._window_start + RATE_WINDOW:
                self._window_start, self._window_count = now, 0
            reset = self._window_start + RATE_WINDOW - now
            if self._window_count >= self.hourly_limit:
                return json_error(
                    429, "Hourly request limit exceeded", "rate_limit_exceeded",
                    self._limit_headers(remaining=0, reset=reset),
                )
            self._window_count += 1
            headers = self._limit_headers(remaining=self.hourly_limit - self._window_count, reset=reset)
        if request.method in ("POST", "PUT", "DELETE") and self.access != "full":
            return json_error(403, "Access type denies this method", "user_access_type_deny")
        try:
            resp = await handler(request)
        except ApiRefusal as exc:
            resp = exc.response
        except web.HTTPException as exc:
            resp = json_error(exc.status, exc.reason)
        resp.headers.update(headers)
        if isinstance(resp, web.Response) and resp.status != 204 and resp.body:
            resp.enable_compression()  # negotiated from Accept-Encoding
        return resp

    def _limit_headers(self, *, remaining: int, reset: float) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.hourly_limit if self.hourly_limit is not None else 0),
            "X-RateLimit-Remaining": str(max(0, remaining)),
            "X-RateLimit-Reset": str(max(0, math.ceil(round(reset, 3)))),  # round: float noise
        }

    # ------------------------------------------------------------------ auth
    async def _h_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.json_response(
                {"error": "unsupported_grant_type", "message": "grant_type must be client_credentials"},
                status=400,
            )
        if not (
            secrets.compare_digest(str(form.get("client_id", "")), self.client_id)
            and secrets.compare_digest(str(form.get("client_secret", "")), self.client_secret)
        ):
            return web.json_response(
                {"error": "invalid_client", "message": "Client authentication failed"}, status=401
            )
        token = secrets.token_urlsafe(24)
        self.tokens[token] = self.clock.now() + self.token_ttl
        self.tokens_issued.append(token)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": max(1, round(self.token_ttl))}
        )

    # --------------------------------------------------------------- account
    async def _h_user(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"client_id": self.account_id, "extension_id": None, "timezone": self.timezone, "access": self.access}
        )

    def _check_client(self, request: web.Request) -> web.Response | None:
        cid = request.match_info["cid"]
        if cid not in ("@me", str(self.account_id)):
            return json_error(404, "Client not found", "client_not_found")
        return None

    def _ext_json(self, ext: SimExtension) -> dict[str, Any]:
        return {
            "id": ext.id, "name": ext.name, "label": ext.label, "type": ext.type,
            "status": ext.status, "extension_group_id": ext.extension_group_id,
            "client_id": self.account_id,
        }

    async def _h_extensions(self, request: web.Request) -> web.Response:
        if (err := self._check_client(request)) is not None:
            return err
        q = request.query
        exts = sorted(self.extensions.values(), key=lambda e: e.id)
        if "type" in q:
            exts = [e for e in exts if e.type == q["type"]]
        if "status" in q:
            exts = [e for e in exts if e.status == q["status"]]
        page = paginate(q, [self._ext_json(e) for e in exts])
        return web.json_response(page)

    async def _h_extension(self, request: web.Request) -> web.Response:
        if (err := self._check_client(request)) is not None:
            return err
        ext = self._ext(request, fax_only=False)
        return web.json_response(self._ext_json(ext))

    def _ext(self, request: web.Request, *, fax_only: bool = True) -> SimExtension:
        try:
            ext = self.extensions.get(int(request.match_info["eid"]))
        except ValueError:
            ext = None
        if ext is None or (fax_only and ext.type != "fax"):
            raise ApiRefusal(404, "Record not found", "extension_not_found")
        return ext

    async def _h_get_mailto(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        return web.json_response({"fax_mailto": ext.fax_mailto})

    async def _h_put_mailto(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return json_error(400, "Request body must be JSON")
        if not isinstance(body, dict) or "fax_mailto" not in body:
            return json_error(400, "fax_mailto is required")
        value = body["fax_mailto"]
        if value is None or value == "":
            ext.fax_mailto = None
        elif isinstance(value, str):
            addrs = [a.strip() for a in value.split(",")]
            bad = [a for a in addrs if not re.fullmatch(r"[^@\s,]+@[^@\s,]+\.[^@\s,]+", a)]
            if bad:
                return json_error(400, f"Invalid e-mail address: {bad[0]}")
            ext.fax_mailto = ",".join(addrs)
        else:
            return json_error(400, "fax_mailto must be a string")
        return web.json_response({"fax_mailto": ext.fax_mailto})

    # --------------------------------------------------------------- sending
    def _fax_json(self, rec: SimSentFax) -> dict[str, Any]:
        return {"datetime": self._fmt(rec.created), "dst_num": rec.dst_num, "id": rec.id, "status": rec.status}

    async def _h_send(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        if ext.status != "active":
            return json_error(403, "Extension is blocked", "access_denied")
        if not request.content_type.startswith("multipart/form-data"):
            return json_error(400, "Content-Type must be multipart/form-data")
        form = await request.post()
        dst_num = form.get("dst_num")
        upload = form.get("file")
        if not isinstance(dst_num, str) or not dst_num:
            return json_error(400, "dst_num is required")
        if not _DST_NUM.match(dst_num):
            return json_error(400, "dst_num is not a valid number")
        if not isinstance(upload, web.FileField):
            return json_error(400, "file is required")
        data = upload.file.read()
        if len(data) > MAX_FILE_BYTES:
            return json_error(413, "The maximum file size is 10 megabytes", "file_too_large")
        kind = file_kind(data)
        if kind == "unknown":
            return json_error(400, "File must be in tiff or pdf format", "invalid_file_format")
        rec = SimSentFax(
            id=self._next_fax_id,
            extension_id=ext.id,
            dst_num=dst_num,
            filename=upload.filename or "",
            document=data,
            sha256=hashlib.sha256(data).hexdigest(),
            kind=kind,
            pages=count_pages(data, kind),
            created=self._now_dt(),
            since=self.clock.now(),
        )
        rec.history.append(("ready_to_send", rec.created))
        self._next_fax_id += 1
        self.sent[rec.id] = rec
        log.info("simulator.fax_created", id=rec.id, dst_num=dst_num, pages=rec.pages, kind=kind)
        return web.json_response(self._fax_json(rec), status=201)

    def _sent(self, request: web.Request, ext: SimExtension) -> SimSentFax:
        try:
            rec = self.sent.get(int(request.match_info["fid"]))
        except ValueError:
            rec = None
        if rec is None or rec.extension_id != ext.id:
            raise ApiRefusal(404, "Record not found")
        self._advance(rec, self.clock.now())
        return rec

    async def _h_list_sent(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        self.tick()
        rows = [self._fax_json(r) for r in sorted(self.sent.values(), key=lambda r: r.id) if r.extension_id == ext.id]
        page = paginate(request.query, rows)
        return web.json_response(page)

    async def _h_get_sent(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        rec = self._sent(request, ext)
        return web.json_response(self._fax_json(rec))

    async def _h_action(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        action = request.query.get("action")
        if action not in ("retry", "cancel"):
            return json_error(400, "action must be retry or cancel", "invalid_action")
        rec = self._sent(request, ext)
        now = self.clock.now()
        if action == "retry":
            if rec.status != "failed":
                return json_error(409, f"Cannot retry a message with status {rec.status}", "invalid_status")
            rec.attempt += 1
            self._set_status(rec, "ready_to_send", now)
        else:
            if rec.status not in ("ready_to_send", "failed"):
                return json_error(409, f"Cannot cancel a message with status {rec.status}", "invalid_status")
            self._set_status(rec, "canceled", now)
        return web.json_response(self._fax_json(rec))

    # ------------------------------------------------------------- receiving
    def _received_json(self, rec: SimReceivedFax) -> dict[str, Any]:
        ext = self.extensions.get(rec.extension_id)
        return {
            "caller_id": rec.caller_id,
            "client_id": self.account_id,
            "datetime": self._fmt(rec.datetime),
            "destination": rec.destination,
            "extension_group_id": ext.extension_group_id if ext else None,
            "extension_id": rec.extension_id,
            "file_size": len(rec.data),
            "uuid": rec.uuid,
        }

    async def _h_list_received(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        q = request.query
        try:
            start = self._parse_dt(q["start_datetime"]) if "start_datetime" in q else None
            end = self._parse_dt(q["end_datetime"]) if "end_datetime" in q else None
        except ValueError:
            return json_error(400, "start_datetime and end_datetime must be YYYY-MM-DD HH:MM:SS")
        order = q.get("order", "asc")
        if order not in ("asc", "desc"):
            return json_error(400, "order must be asc or desc")
        recs = [
            r for r in self.received_faxes(ext.id)
            if (start is None or r.datetime >= start) and (end is None or r.datetime <= end)
        ]
        if order == "desc":
            recs.reverse()
        page = paginate(q, [self._received_json(r) for r in recs])
        return web.json_response(page)

    def _received(self, request: web.Request, ext: SimExtension) -> SimReceivedFax:
        rec = self.received.get(request.match_info["uuid"])
        if rec is None or rec.extension_id != ext.id:
            raise ApiRefusal(404, "Record not found")
        return rec

    async def _h_download(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        rec = self._received(request, ext)
        return web.Response(body=rec.data, headers={"Content-Type": rec.content_type})

    async def _h_delete_received(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        rec = self._received(request, ext)
        del self.received[rec.uuid]
        self.deleted_received.append(rec.uuid)
        return web.Response(status=204)
