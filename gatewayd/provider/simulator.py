"""A faithful simulator of the fax provider's API, on a real loopback socket.

It serves the same paths as the real API (``/oauth/token`` and
``/api/ver1.0/...``) so the real ``ProviderClient`` talks to it unchanged,
plus a control API under ``/_sim/`` for the demo and for tests. Tests can also
drive it in-process (``inject_received``, ``set_outcome``, ``add_fault``,
``clock.advance`` ...). See docs/provider.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import fnmatch
import hashlib
import io
import ipaddress
import itertools
import math
import re
import secrets
import sys
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

API_PREFIX = "/api/ver1.0"
TOKEN_PATH = "/oauth/token"
MAX_FILE_BYTES = 10_000_000
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
STATUSES = ("ready_to_send", "sending", "sent", "failed", "canceled", "error")
OUTCOMES = ("sent", "failed", "error")
RATE_WINDOW = 3600.0
FIRST_FAX_ID = 174  # the seed's examples start around here
_DST_NUM = re.compile(r"^[0-9*#+]{2,32}$")


class SimClock:
    """Monotonic clock of the simulator; tests advance it instead of sleeping.

    Real time plus an offset by default; ``frozen=True`` stops real time so
    only ``advance`` moves it (deterministic tests).
    """

    def __init__(self, *, frozen: bool = False) -> None:
        self.frozen = frozen
        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        self._offset = 0.0

    def now(self) -> float:
        base = self._mono0 if self.frozen else time.monotonic()
        return base + self._offset

    __call__ = now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock does not go backwards")
        self._offset += seconds

    def wall(self) -> float:
        """Epoch seconds matching now() (for the provider's datetimes)."""
        return self._wall0 + (self.now() - self._mono0)


class LoggedRequest(NamedTuple):
    method: str
    path: str  # without the /api/ver1.0 prefix and without the query
    status: int | None  # None: the connection was dropped without an answer
    time: float  # simulator clock


@dataclass
class SimExtension:
    id: int
    name: str
    type: str = "fax"
    status: str = "active"
    label: str | None = None
    extension_group_id: int | None = None
    fax_mailto: str | None = None


@dataclass
class SimSentFax:
    id: int
    extension_id: int
    dst_num: str
    filename: str
    document: bytes = field(repr=False)
    sha256: str
    kind: str
    pages: int | None
    created: dt.datetime
    status: str = "ready_to_send"
    attempt: int = 1
    since: float = 0.0  # simulator clock time the current status began
    history: list[tuple[str, dt.datetime]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.document)


@dataclass
class SimReceivedFax:
    uuid: str
    extension_id: int
    caller_id: str
    destination: str
    datetime: dt.datetime
    data: bytes = field(repr=False)
    content_type: str


@dataclass
class Fault:
    """One injected fault: applies to the next ``count`` matching requests
    (``count=None``: until removed). ``path`` is an fnmatch pattern on the path
    without /api/ver1.0 (``/oauth/token`` for the token endpoint)."""

    path: str = "*"
    method: str | None = None
    count: int | None = 1
    status: int | None = None  # answer this status with a JSON error body
    message: str | None = None
    latency: float = 0.0  # real seconds to wait before processing (client timeouts)
    answer_latency: float = 0.0  # process the request, then wait this long before answering
    drop: bool = False  # close the connection without processing or answering
    commit_then_drop: bool = False  # process the request, then close without answering
    rate_limit_reset: float | None = None  # answer 429 with this X-RateLimit-Reset
    id: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        return fnmatch.fnmatchcase(path, self.path)


def _json_error(status: int, message: str, word: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message}
    if word:
        body["status"] = word
    return web.json_response(body, status=status, headers=headers)


def count_pages(data: bytes, kind: str) -> int | None:
    """Pages of a PDF (pikepdf) or frames of a TIFF (Pillow); None if unreadable."""
    try:
        if kind == "pdf":
            import pikepdf

            with pikepdf.open(io.BytesIO(data)) as pdf:
                return len(pdf.pages)
        if kind == "tiff":
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                return int(getattr(img, "n_frames", 1))
    except Exception:  # any parse failure: the provider would fail the fax
        return None
    return None


def _kind(data: bytes) -> str:
    if data.startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(b"II*\x00") or data.startswith(b"MM\x00*"):
        return "tiff"
    return "unknown"


class ProviderSimulator:
    """The provider's API for one client account (id 12) on 127.0.0.1."""

    def __init__(
        self,
        client_id: str = "demo",
        client_secret: str = "demo",
        *,
        token_ttl: float = 3600.0,
        timezone: str = "Europe/Moscow",
        send_delays: tuple[float, float] = (1.0, 2.0),
        hourly_limit: int | None = None,
        clock: SimClock | None = None,
        account_id: int = 12,
        access: str = "full",
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.timezone = timezone
        self.tz = ZoneInfo(timezone)
        self.send_delays = send_delays
        self.hourly_limit = hourly_limit
        self.clock = clock or SimClock()
        self.account_id = account_id
        self.access = access
        self.request_log: list[LoggedRequest] = []
        self.tokens_issued: list[str] = []  # every token ever handed out (leak tests)
        self.requests_without_gzip = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._fault_ids = itertools.count(1)
        self._reset_state()

    # ----------------------------------------------------------------- state
    def _reset_state(self) -> None:
        self.tokens: dict[str, float] = {}  # token -> expiry (clock)
        self.extensions: dict[int, SimExtension] = {}
        self.sent: dict[int, SimSentFax] = {}
        self.received: dict[str, SimReceivedFax] = {}
        self.outcomes: dict[str, list[str]] = {}
        self.faults: list[Fault] = []
        self._next_fax_id = FIRST_FAX_ID
        self._window_start: float | None = None
        self._window_count = 0
        self.add_extension(100, type="phone")
        self.add_extension(122, fax_mailto="admin@example.test")
        self.add_extension(123)

    def reset(self) -> None:
        """Back to the initial account: default extensions, no faxes, no
        faults, no tokens, empty request log."""
        self._reset_state()
        self.request_log.clear()
        self.requests_without_gzip = 0

    def add_extension(
        self,
        id: int,
        type: str = "fax",
        fax_mailto: str | None = None,
        status: str = "active",
        *,
        name: str | None = None,
        label: str | None = None,
        extension_group_id: int | None = None,
    ) -> SimExtension:
        ext = SimExtension(
            id=int(id),
            name=name or f"000*{id}",
            type=type,
            status=status,
            label=label,
            extension_group_id=extension_group_id,
            fax_mailto=fax_mailto or None,
        )
        self.extensions[ext.id] = ext
        return ext

    def expire_tokens(self) -> None:
        """Every issued token is refused from now on (401)."""
        self.tokens.clear()

    def set_outcome(self, dst_num: str, outcomes: Sequence[str]) -> None:
        """Outcome of each sending attempt to dst_num: ["failed", "sent"] fails
        the first attempt and sends after a retry. The last entry repeats;
        numbers without a rule are sent."""
        outcomes = list(outcomes)
        if not outcomes or any(o not in OUTCOMES for o in outcomes):
            raise ValueError(f"outcomes must be a non-empty list of {OUTCOMES}")
        self.outcomes[dst_num] = outcomes

    def inject_received(
        self,
        extension_id: int,
        data: bytes,
        caller_id: str = "74951234567",
        destination: str = "78123092631",
        when: dt.datetime | None = None,
        *,
        content_type: str | None = None,
    ) -> str:
        """A fax received on the extension; returns its uuid. ``content_type``
        overrides the one derived from the file's kind (e.g. a deliberately
        generic application/octet-stream)."""
        if int(extension_id) not in self.extensions:
            raise KeyError(f"no extension {extension_id}")
        if when is None:
            when = self._now_dt()
        elif when.tzinfo is None:
            when = when.replace(tzinfo=self.tz)
        when = when.astimezone(self.tz).replace(microsecond=0)
        kind = _kind(data)
        ctype = content_type or {"pdf": "application/pdf", "tiff": "image/tiff"}.get(
            kind, "application/octet-stream"
        )
        rec = SimReceivedFax(
            uuid=str(uuidlib.uuid4()),
            extension_id=int(extension_id),
            caller_id=caller_id,
            destination=destination,
            datetime=when,
            data=bytes(data),
            content_type=ctype,
        )
        self.received[rec.uuid] = rec
        return rec.uuid

    def sent_faxes(self) -> list[SimSentFax]:
        """Sent faxes, their status brought up to the clock."""
        self.tick()
        return sorted(self.sent.values(), key=lambda f: f.id)

    def sent_fax(self, fax_id: int) -> SimSentFax:
        """One sent fax, its status brought up to the clock (KeyError if unknown)."""
        rec = self.sent[int(fax_id)]
        self._advance(rec, self.clock.now())
        return rec

    def received_faxes(self, extension_id: int | None = None) -> list[SimReceivedFax]:
        recs = sorted(self.received.values(), key=lambda r: r.datetime)
        return [r for r in recs if extension_id is None or r.extension_id == extension_id]

    def add_fault(
        self,
        path: str = "*",
        *,
        method: str | None = None,
        count: int | None = 1,
        status: int | None = None,
        message: str | None = None,
        latency: float = 0.0,
        answer_latency: float = 0.0,
        drop: bool = False,
        commit_then_drop: bool = False,
        rate_limit_reset: float | None = None,
    ) -> Fault:
        fault = Fault(
            path=path, method=method, count=count, status=status, message=message,
            latency=latency, answer_latency=answer_latency, drop=drop, commit_then_drop=commit_then_drop,
            rate_limit_reset=rate_limit_reset, id=next(self._fault_ids),
        )
        self.faults.append(fault)
        return fault

    def fail_next(self, n: int = 1, path: str = "*", *, status: int = 503, method: str | None = None) -> Fault:
        """The next n matching requests answer ``status`` (5xx by default)."""
        return self.add_fault(path, method=method, count=n, status=status)

    def add_latency(self, seconds: float, path: str = "*", *, count: int | None = None, method: str | None = None) -> Fault:
        return self.add_fault(path, method=method, count=count, latency=seconds)

    def rate_limit_next(self, reset: float, n: int = 1, path: str = "*") -> Fault:
        """The next n matching requests answer 429 with X-RateLimit-Reset: reset."""
        return self.add_fault(path, count=n, rate_limit_reset=reset)

    def drop_after_commit(self, n: int = 1, path: str = "/extension/*/fax/out/") -> Fault:
        """The next n fax POSTs create the fax, then lose the answer."""
        return self.add_fault(path, method="POST", count=n, commit_then_drop=True)

    def clear_faults(self) -> None:
        self.faults.clear()

    def count_requests(self, method: str | None = None, path: str = "*") -> int:
        """Requests in the log matching method and an fnmatch path pattern."""
        return sum(
            1
            for r in self.request_log
            if (method is None or r.method == method.upper()) and fnmatch.fnmatchcase(r.path, path)
        )

    # --------------------------------------------------------- state machine
    def tick(self) -> None:
        """Move every sent fax along its state machine up to the clock."""
        now = self.clock.now()
        for rec in self.sent.values():
            self._advance(rec, now)

    def _advance(self, rec: SimSentFax, now: float) -> None:
        ready_delay, sending_delay = self.send_delays
        while True:
            if rec.status == "ready_to_send" and now >= rec.since + ready_delay:
                self._set_status(rec, "sending", rec.since + ready_delay)
            elif rec.status == "sending" and now >= rec.since + sending_delay:
                self._set_status(rec, self._outcome(rec), rec.since + sending_delay)
            else:
                return

    def _outcome(self, rec: SimSentFax) -> str:
        if rec.pages is None:
            return "error"  # an unreadable document cannot be transmitted
        rules = self.outcomes.get(rec.dst_num)
        if not rules:
            return "sent"
        return rules[min(rec.attempt, len(rules)) - 1]

    def _set_status(self, rec: SimSentFax, status: str, at: float) -> None:
        rec.status = status
        rec.since = at
        rec.history.append((status, self._dt_at(at)))

    # ------------------------------------------------------------------ time
    def _dt_at(self, clock_time: float) -> dt.datetime:
        epoch = self.clock.wall() - (self.clock.now() - clock_time)
        return dt.datetime.fromtimestamp(int(epoch), self.tz)

    def _now_dt(self) -> dt.datetime:
        return self._dt_at(self.clock.now())

    def _fmt(self, value: dt.datetime) -> str:
        return value.astimezone(self.tz).strftime(DATETIME_FORMAT)

    def _parse_dt(self, text: str) -> dt.datetime:
        return dt.datetime.strptime(text, DATETIME_FORMAT).replace(tzinfo=self.tz)

    # ---------------------------------------------------------------- server
    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        return self.url + API_PREFIX

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(
            middlewares=[self._fault_middleware, self._api_middleware],
            # Above the provider's limit, so an oversize upload gets the
            # provider's JSON answer instead of aiohttp's bare 413.
            client_max_size=4 * MAX_FILE_BYTES,
        )
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()
        server = self._site._server
        assert server is not None and server.sockets
        sockname = server.sockets[0].getsockname()
        self._host, self._port = host, int(sockname[1])
        log.info("simulator.started", url=self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def __aenter__(self) -> ProviderSimulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _routes(self, app: web.Application) -> None:
        r = app.router
        p = API_PREFIX
        r.add_post(TOKEN_PATH, self._h_token)
        r.add_get(p + "/user", self._h_user)
        r.add_get(p + "/client/{cid}/extension/", self._h_extensions)
        r.add_get(p + "/client/{cid}/extension/{eid}", self._h_extension)
        r.add_get(p + "/extension/{eid}/fax/", self._h_get_mailto)
        r.add_put(p + "/extension/{eid}/fax/", self._h_put_mailto)
        r.add_post(p + "/extension/{eid}/fax/out/", self._h_send)
        r.add_get(p + "/extension/{eid}/fax/out/", self._h_list_sent)
        r.add_get(p + "/extension/{eid}/fax/out/{fid}", self._h_get_sent)
        r.add_put(p + "/extension/{eid}/fax/out/{fid}", self._h_action)
        r.add_get(p + "/extension/{eid}/fax/in/", self._h_list_received)
        r.add_get(p + "/extension/{eid}/fax/in/{uuid}", self._h_download)
        r.add_delete(p + "/extension/{eid}/fax/in/{uuid}", self._h_delete_received)
        r.add_post("/_sim/inbound", self._c_inbound)
        r.add_get("/_sim/sent", self._c_sent)
        r.add_get("/_sim/received", self._c_received)
        r.add_get("/_sim/faults", self._c_faults)
        r.add_post("/_sim/faults", self._c_add_fault)
        r.add_delete("/_sim/faults", self._c_clear_faults)
        r.add_get("/_sim/outcomes", self._c_outcomes)
        r.add_post("/_sim/outcomes", self._c_set_outcome)
        r.add_post("/_sim/reset", self._c_reset)
        r.add_post("/_sim/clock", self._c_clock)
        r.add_post("/_sim/expire_tokens", self._c_expire_tokens)
        r.add_post("/_sim/extensions", self._c_add_extension)
        r.add_get("/_sim/requests", self._c_requests)

    # ------------------------------------------------------------ middleware
    def _rel(self, path: str) -> str:
        return path[len(API_PREFIX):] if path.startswith(API_PREFIX + "/") else path

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                if fault.count is not None:
                    fault.count -= 1
                return fault
        return None

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
                    _drop(request)
                    return web.Response(status=500)  # never written: the transport is closed
                if fault.rate_limit_reset is not None:
                    headers = self._limit_headers(remaining=0, reset=fault.rate_limit_reset)
                    status = 429
                    return _json_error(429, "Rate limit exceeded", "rate_limit_exceeded", headers)
                if fault.status is not None:
                    status = fault.status
                    return _json_error(fault.status, fault.message or f"Simulated error {fault.status}")
            try:
                resp = await handler(request)
            except web.HTTPException as exc:  # router 404/405: the API answers JSON
                resp = _json_error(exc.status, exc.reason)
            if fault is not None and fault.answer_latency:
                await asyncio.sleep(fault.answer_latency)
            if fault is not None and fault.commit_then_drop:
                _drop(request)
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
            return _json_error(401, "Invalid or expired access token")
        headers: dict[str, str] = {}
        if self.hourly_limit is not None:
            now = self.clock.now()
            if self._window_start is None or now >= self._window_start + RATE_WINDOW:
                self._window_start, self._window_count = now, 0
            reset = self._window_start + RATE_WINDOW - now
            if self._window_count >= self.hourly_limit:
                return _json_error(
                    429, "Hourly request limit exceeded", "rate_limit_exceeded",
                    self._limit_headers(remaining=0, reset=reset),
                )
            self._window_count += 1
            headers = self._limit_headers(remaining=self.hourly_limit - self._window_count, reset=reset)
        if request.method in ("POST", "PUT", "DELETE") and self.access != "full":
            return _json_error(403, "Access type denies this method", "user_access_type_deny")
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            resp = _json_error(exc.status, exc.reason)
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
            return _json_error(404, "Client not found", "client_not_found")
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
        page = _paginate(q, [self._ext_json(e) for e in exts])
        if isinstance(page, web.Response):
            return page
        return web.json_response(page)

    async def _h_extension(self, request: web.Request) -> web.Response:
        if (err := self._check_client(request)) is not None:
            return err
        ext = self._ext(request, fax_only=False)
        if isinstance(ext, web.Response):
            return ext
        return web.json_response(self._ext_json(ext))

    def _ext(self, request: web.Request, *, fax_only: bool = True) -> SimExtension | web.Response:
        try:
            ext = self.extensions.get(int(request.match_info["eid"]))
        except ValueError:
            ext = None
        if ext is None:
            return _json_error(404, "Record not found", "extension_not_found")
        if fax_only and ext.type != "fax":
            return _json_error(404, "Record not found", "extension_not_found")
        return ext

    async def _h_get_mailto(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        if isinstance(ext, web.Response):
            return ext
        return web.json_response({"fax_mailto": ext.fax_mailto})

    async def _h_put_mailto(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        if isinstance(ext, web.Response):
            return ext
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _json_error(400, "Request body must be JSON")
        if not isinstance(body, dict) or "fax_mailto" not in body:
            return _json_error(400, "fax_mailto is required")
        value = body["fax_mailto"]
        if value is None or value == "":
            ext.fax_mailto = None
        elif isinstance(value, str):
            addrs = [a.strip() for a in value.split(",")]
            bad = [a for a in addrs if not re.fullmatch(r"[^@\s,]+@[^@\s,]+\.[^@\s,]+", a)]
            if bad:
                return _json_error(400, f"Invalid e-mail address: {bad[0]}")
            ext.fax_mailto = ",".join(addrs)
        else:
            return _json_error(400, "fax_mailto must be a string")
        return web.json_response({"fax_mailto": ext.fax_mailto})

    # --------------------------------------------------------------- sending
    def _fax_json(self, rec: SimSentFax) -> dict[str, Any]:
        return {"datetime": self._fmt(rec.created), "dst_num": rec.dst_num, "id": rec.id, "status": rec.status}

    async def _h_send(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        if isinstance(ext, web.Response):
            return ext
        if ext.status != "active":
            return _json_error(403, "Extension is blocked", "access_denied")
        if not request.content_type.startswith("multipart/form-data"):
            return _json_error(400, "Content-Type must be multipart/form-data")
        form = await request.post()
        dst_num = form.get("dst_num")
        upload = form.get("file")
        if not isinstance(dst_num, str) or not dst_num:
            return _json_error(400, "dst_num is required")
        if not _DST_NUM.match(dst_num):
            return _json_error(400, "dst_num is not a valid number")
        if not isinstance(upload, web.FileField):
            return _json_error(400, "file is required")
        data = upload.file.read()
        if len(data) > MAX_FILE_BYTES:
            return _json_error(413, "The maximum file size is 10 megabytes", "file_too_large")
        kind = _kind(data)
        if kind == "unknown":
            return _json_error(400, "File must be in tiff or pdf format", "invalid_file_format")
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

    def _sent(self, request: web.Request, ext: SimExtension) -> SimSentFax | web.Response:
        try:
            rec = self.sent.get(int(request.match_info["fid"]))
        except ValueError:
            rec = None
        if rec is None or rec.extension_id != ext.id:
            return _json_error(404, "Record not found")
        self._advance(rec, self.clock.now())
        return rec

    async def _h_list_sent(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        if isinstance(ext, web.Response):
            return ext
        self.tick()
        rows = [self._fax_json(r) for r in sorted(self.sent.values(), key=lambda r: r.id) if r.extension_id == ext.id]
        page = _paginate(request.query, rows)
        if isinstance(page, web.Response):
            return page
        return web.json_response(page)

    async def _h_get_sent(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        if isinstance(ext, web.Response):
            return ext
        rec = self._sent(request, ext)
        if isinstance(rec, web.Response):
            return rec
        return web.json_response(self._fax_json(rec))

    async def _h_action(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        if isinstance(ext, web.Response):
            return ext
        action = request.query.get("action")
        if action not in ("retry", "cancel"):
            return _json_error(400, "action must be retry or cancel", "invalid_action")
        rec = self._sent(request, ext)
        if isinstance(rec, web.Response):
            return rec
        now = self.clock.now()
        if action == "retry":
            if rec.status != "failed":
                return _json_error(409, f"Cannot retry a message with status {rec.status}", "invalid_status")
            rec.attempt += 1
            self._set_status(rec, "ready_to_send", now)
        else:
            if rec.status not in ("ready_to_send", "failed"):
                return _json_error(409, f"Cannot cancel a message with status {rec.status}", "invalid_status")
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
        if isinstance(ext, web.Response):
            return ext
        q = request.query
        try:
            start = self._parse_dt(q["start_datetime"]) if "start_datetime" in q else None
            end = self._parse_dt(q["end_datetime"]) if "end_datetime" in q else None
        except ValueError:
            return _json_error(400, "start_datetime and end_datetime must be YYYY-MM-DD HH:MM:SS")
        order = q.get("order", "asc")
        if order not in ("asc", "desc"):
            return _json_error(400, "order must be asc or desc")
        recs = [
            r for r in self.received_faxes(ext.id)
            if (start is None or r.datetime >= start) and (end is None or r.datetime <= end)
        ]
        if order == "desc":
            recs.reverse()
        page = _paginate(q, [self._received_json(r) for r in recs])
        if isinstance(page, web.Response):
            return page
        return web.json_response(page)

    def _received(self, request: web.Request, ext: SimExtension) -> SimReceivedFax | web.Response:
        rec = self.received.get(request.match_info["uuid"])
        if rec is None or rec.extension_id != ext.id:
            return _json_error(404, "Record not found")
        return rec

    async def _h_download(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        if isinstance(ext, web.Response):
            return ext
        rec = self._received(request, ext)
        if isinstance(rec, web.Response):
            return rec
        return web.Response(body=rec.data, headers={"Content-Type": rec.content_type})

    async def _h_delete_received(self, request: web.Request) -> web.Response:
        ext = self._ext(request)
        if isinstance(ext, web.Response):
            return ext
        rec = self._received(request, ext)
        if isinstance(rec, web.Response):
            return rec
        del self.received[rec.uuid]
        return web.Response(status=204)

    # ---------------------------------------------------------- control API
    def sent_summary(self) -> list[dict[str, Any]]:
        return [
            {
                "id": r.id, "extension_id": r.extension_id, "dst_num": r.dst_num,
                "filename": r.filename, "sha256": r.sha256, "size": r.size, "kind": r.kind,
                "pages": r.pages, "status": r.status, "attempt": r.attempt,
                "created": self._fmt(r.created),
                "history": [{"status": s, "datetime": self._fmt(t)} for s, t in r.history],
            }
            for r in self.sent_faxes()
        ]

    async def _c_inbound(self, request: web.Request) -> web.Response:
        try:
            if request.content_type.startswith("multipart/"):
                form = await request.post()
                upload = form.get("file")
                if not isinstance(upload, web.FileField):
                    return _json_error(400, "file is required")
                data = upload.file.read()
                fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
            else:
                fields = await request.json()
                if not isinstance(fields, dict):
                    raise ValueError("a JSON object is required")
                data = base64.b64decode(fields.get("data_base64", ""), validate=True)
            if not data:
                return _json_error(400, "the fax file is empty")
            ext_id = int(fields.get("extension_id") or self._first_fax_extension())
            when = self._parse_dt(fields["datetime"]) if fields.get("datetime") else None
            kw = {k: str(fields[k]) for k in ("caller_id", "destination") if fields.get(k)}
            uuid = self.inject_received(ext_id, data, when=when, content_type=fields.get("content_type") or None, **kw)
        except (ValueError, KeyError, binascii.Error) as exc:
            return _json_error(400, f"bad inbound fax: {exc}")
        return web.json_response({"uuid": uuid, "extension_id": ext_id}, status=201)

    def _first_fax_extension(self) -> int:
        return min(e.id for e in self.extensions.values() if e.type == "fax")

    async def _c_sent(self, request: web.Request) -> web.Response:
        return web.json_response(self.sent_summary())

    async def _c_received(self, request: web.Request) -> web.Response:
        return web.json_response([self._received_json(r) for r in self.received_faxes()])

    async def _c_faults(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(f) for f in self.faults])

    async def _c_add_fault(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            allowed = {"path", "method", "count", "status", "message", "latency", "answer_latency", "drop",
                       "commit_then_drop", "rate_limit_reset"}
            if not isinstance(body, dict) or set(body) - allowed:
                raise ValueError(f"fields allowed: {sorted(allowed)}")
            fault = self.add_fault(**body)
        except (ValueError, TypeError) as exc:
            return _json_error(400, f"bad fault: {exc}")
        return web.json_response(asdict(fault), status=201)

    async def _c_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.Response(status=204)

    async def _c_outcomes(self, request: web.Request) -> web.Response:
        return web.json_response(self.outcomes)

    async def _c_set_outcome(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            self.set_outcome(str(body["dst_num"]), body["outcomes"])
        except (ValueError, TypeError, KeyError) as exc:
            return _json_error(400, f"bad outcome: {exc}")
        return web.json_response(self.outcomes)

    async def _c_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.Response(status=204)

    async def _c_clock(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            self.clock.advance(float(body.get("advance", 0)))
        except (ValueError, TypeError, AttributeError) as exc:
            return _json_error(400, f"bad clock request: {exc}")
        self.tick()
        return web.json_response({"now": self.clock.now(), "datetime": self._fmt(self._now_dt())})

    async def _c_expire_tokens(self, request: web.Request) -> web.Response:
        self.expire_tokens()
        return web.Response(status=204)

    async def _c_add_extension(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            ext = self.add_extension(
                int(body["id"]), type=body.get("type", "fax"), fax_mailto=body.get("fax_mailto"),
                status=body.get("status", "active"), name=body.get("name"), label=body.get("label"),
                extension_group_id=body.get("extension_group_id"),
            )
        except (ValueError, TypeError, KeyError) as exc:
            return _json_error(400, f"bad extension: {exc}")
        return web.json_response({**self._ext_json(ext), "fax_mailto": ext.fax_mailto}, status=201)

    async def _c_requests(self, request: web.Request) -> web.Response:
        return web.json_response([r._asdict() for r in self.request_log])


def _drop(request: web.Request) -> None:
    # Close the socket without an answer: the client sees the connection end.
    if request.transport is not None:
        request.transport.close()


def _paginate(query: Any, rows: list[Any]) -> list[Any] | web.Response:
    """page/per_page like the provider's other lists; absent = everything."""
    if "page" not in query and "per_page" not in query:
        return rows
    try:
        page = int(query.get("page", 1))
        per_page = int(query.get("per_page", 100))
    except ValueError:
        return _json_error(400, "page and per_page must be integers")
    if page < 1 or not 1 <= per_page <= 1000:
        return _json_error(400, "page must be >= 1 and per_page between 1 and 1000")
    return rows[(page - 1) * per_page : page * per_page]


@contextlib.asynccontextmanager
async def run_simulator(host: str = "127.0.0.1", port: int = 0, **kw: Any) -> AsyncIterator[ProviderSimulator]:
    """``async with run_simulator(**kw) as sim:`` - a started simulator."""
    sim = ProviderSimulator(**kw)
    await sim.start(host, port)
    try:
        yield sim
    finally:
        await sim.stop()


def parse_listen(listen: str) -> tuple[str, int]:
    """"HOST:PORT" or "[IPv6]:PORT" -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, not {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def main_simulator(
    listen: str = "127.0.0.1:8080",
    client_id: str = "demo",
    client_secret: str = "demo",
    *,
    out: Any = None,
    **kw: Any,
) -> None:
    """Run the simulator until cancelled (``gatewayd simulator``)."""
    out = out or sys.stdout
    host, port = parse_listen(listen)
    if not _is_loopback(host):
        print(f"warning: the simulator has no real security and its control API is "
              f"unauthenticated; listening on {host}", file=sys.stderr)
    sim = ProviderSimulator(client_id, client_secret, **kw)
    await sim.start(host, port)
    try:
        lines = [
            f"provider simulator listening on {sim.url}",
            f"  base_url      = {sim.base_url}",
            f"  token_url     = {sim.token_url}",
            f"  client_id     = {client_id}",
            f"  client_secret = {client_secret}",
            f"  control API   = {sim.url}/_sim/  (sent, received, faults, outcomes, reset, clock)",
            "  fax extensions: " + ", ".join(
                f"{e.id} ({e.name})" for e in sorted(sim.extensions.values(), key=lambda e: e.id) if e.type == "fax"
            ),
        ]
        print("\n".join(lines), file=out, flush=True)
        await asyncio.Event().wait()
    finally:
        await sim.stop()


__all__ = [
    "Fault", "LoggedRequest", "ProviderSimulator", "SimClock", "SimExtension",
    "SimReceivedFax", "SimSentFax", "count_pages", "main_simulator", "parse_listen", "run_simulator",
]
