"""Client for the fax provider's REST API (Telphin "API ver1.0").

This module is the only code in gatewayd that knows the provider's paths and
wire formats. Everything else gets typed results and a small set of errors:

* ``ProviderUnavailable`` - try again later (5xx, connect errors, timeouts).
* ``RateLimited``         - try again after ``retry_after`` seconds.
* ``AuthError``           - the credentials or the application's rights are wrong.
* ``NotFound`` / ``Rejected`` - the provider said no; retrying will not help.
* ``AmbiguousSubmit``     - a fax POST may or may not have created a fax:
  reconcile with ``list_sent_faxes`` before sending again.
* ``DocumentRefused``     - refused locally, nothing was sent.

See docs/provider.md for which paths are confirmed and which are inferred.

The errors are defined in ``errors.py``, the result records in
``results.py`` and the wire-format readers in ``wire.py``; callers import
all of them from here. This module stays over 600 lines on purpose: it is
one class, the request machinery (token, retries, rate limits) together with
every endpoint that uses it; the path table itself is in ``paths.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import structlog

from gatewayd.backoff import backoff_delay
from gatewayd.filekinds import fax_file_kind
from gatewayd.provider.errors import (
    AmbiguousSubmit,
    AuthError,
    DocumentRefused,
    NotFound,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    Rejected,
)
from gatewayd.provider.paths import INFERRED_PATHS, PATHS, merged_paths
from gatewayd.provider.results import FINAL_STATUSES, Extension, FaxFile, FileKind, IncomingFax, SentFax, User
from gatewayd.provider.wire import (
    MAX_RESPONSE_BYTES,
    ResponseTooLarge,
    error_fields,
    extension_from_row,
    int_id,
    json_list,
    json_object,
    opt_int,
    origin,
    read_capped,
    require_aware,
    retry_after_seconds,
    split_mailto,
    uuid_segment,
)

log = structlog.get_logger(__name__)

# The errors and result types live in errors.py and results.py; they are
# named here too, so callers import everything provider from this module.
__all__ = [
    "CANCELABLE_STATUSES",
    "FINAL_STATUSES",
    "INFERRED_PATHS",
    "MAX_DOCUMENT_BYTES",
    "PAGE_SIZE",
    "PATHS",
    "RETRYABLE_STATUSES",
    "AmbiguousSubmit",
    "AuthError",
    "DocumentRefused",
    "Extension",
    "FaxFile",
    "FileKind",
    "IncomingFax",
    "NotFound",
    "ProviderClient",
    "ProviderError",
    "ProviderUnavailable",
    "RateLimited",
    "Rejected",
    "SentFax",
    "User",
]

# API paths: the one table is in paths.py (overridable with [provider.paths]);
# each client uses its merged copy, ``self.paths``.
#: Label used for the token endpoint in on_request callbacks and logs.
TOKEN_PATH_LABEL = "/oauth/token"

MAX_DOCUMENT_BYTES = 10_000_000  # the provider's "10 megabytes", safe reading
TOKEN_RENEW_MARGIN = 60.0  # renew this many seconds before expires_in runs out
SHORT_RATE_LIMIT_WAIT = 2.0  # idempotent calls may sleep this long once on 429
PAGE_SIZE = 100
MAX_PAGES = 1000  # a bound, so a server that ignores paging cannot loop us
DEFAULT_TIMEZONE = "Europe/Moscow"
PROVIDER_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"

#: Statuses that allow ?action=retry / ?action=cancel (docs/provider.md, The simulator: Behaviour, the retry/cancel table).
RETRYABLE_STATUSES: frozenset[str] = frozenset({"failed"})
CANCELABLE_STATUSES: frozenset[str] = frozenset({"ready_to_send", "failed"})

OnRequest = Callable[[str, str, int | None, float], None]


class _UnreadableAnswer(Exception):
    """An answer over the size cap, or in an encoding that cannot be read (``ProviderClient._fetch``)."""


# --------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------
class ProviderClient:
    """Async client for one provider account; one pooled connection set.

    ``on_request(method, path_template, http_status_or_None, seconds)`` is
    called after every HTTP attempt (for metrics). ``sleep`` and ``clock``
    are injectable so tests need not wait.
    """

    def __init__(
        self,
        base_url: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        timeout: float = 30.0,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_request: OnRequest | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        max_attempts: int = 4,
        clock: Callable[[], float] = time.monotonic,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        paths: Mapping[str, str] | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        #: The path table in use: PATHS with the configuration's overrides.
        self.paths: dict[str, str] = merged_paths(paths)
        self._base_url = base_url.rstrip("/")
        self._max_response_bytes = max_response_bytes
        self._token_url = token_url
        self._allowed = {origin(self._base_url), origin(token_url)}
        if not client_id or not client_secret:
            raise ValueError("provider client_id and client_secret are required")
        self._client_id = client_id
        self._client_secret = client_secret
        self._on_request = on_request
        self._sleep = sleep
        self._clock = clock
        self._max_attempts = max(1, int(max_attempts))
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._random = random.Random()
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,  # a redirect could carry the token elsewhere
            headers={"Accept-Encoding": "gzip", "Accept": "application/json"},
            event_hooks={"request": [self._guard_host]},
        )
        self._token_lock = asyncio.Lock()
        self._user_lock = asyncio.Lock()
        self._access_token: str | None = None
        self._previous_token: str | None = None
        self._token_renew_at = 0.0
        self._blocked_until = 0.0
        self._user: User | None = None
        self._tz: dt.tzinfo = ZoneInfo(DEFAULT_TIMEZONE)
        # Health facts for /healthz (time.monotonic-style values from clock).
        self.last_success_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        # The provider's hourly quota as last reported (X-RateLimit-*), for metrics.
        self.rate_limit_limit: int | None = None
        self.rate_limit_remaining: int | None = None
        # Paths that answered 404/405 on consecutive calls: key -> (status,
        # count); a 2xx on the path clears it (docs/operations.md, Health).
        self.failing_paths: dict[str, tuple[int, int]] = {}
        #: The field names of the last token answer (for provider-check).
        self.token_fields: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, provider_cfg: Any, **kw: Any) -> ProviderClient:
        """Build from a config object with base_url, token_url, client_id,
        client_secret and timeout (seconds, or a timedelta)."""
        timeout = provider_cfg.timeout
        if isinstance(timeout, dt.timedelta):
            timeout = timeout.total_seconds()
        return cls(
            provider_cfg.base_url,
            provider_cfg.token_url,
            str(provider_cfg.client_id),
            provider_cfg.client_secret,
            float(timeout),
            paths=dict(getattr(provider_cfg, "paths", ()) or ()),
            **kw,
        )

    def __repr__(self) -> str:  # never show the secret or token
        return f"<ProviderClient base_url={self._base_url!r} client_id={self._client_id!r}>"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ProviderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def timezone(self) -> dt.tzinfo:
        """The client's time zone (from GET /user once fetched)."""
        return self._tz

    @property
    def blocked_for(self) -> float:
        """Seconds left of a rate-limit block (0 when not blocked)."""
        return max(0.0, self._blocked_until - self._clock())

    # ---------------------------------------------------------------- account
    async def get_user(self) -> User:
        """GET /user, cached after the first success."""
        if self._user is not None:
            return self._user
        async with self._user_lock:
            if self._user is None:
                data = json_object(await self._call("GET", "user", {}))
                tzname = data.get("timezone") or DEFAULT_TIMEZONE
                try:
                    self._tz = ZoneInfo(tzname)
                except (ZoneInfoNotFoundError, ValueError):
                    log.warning("provider.unknown_timezone", timezone=tzname, using=DEFAULT_TIMEZONE)
                    self._tz = ZoneInfo(DEFAULT_TIMEZONE)
                self._user = User(
                    client_id=int(data["client_id"]),
                    extension_id=opt_int(data.get("extension_id")),
                    timezone=str(tzname),
                    access=str(data.get("access") or ""),
                )
        return self._user

    async def list_fax_extensions(self) -> list[Extension]:
        """Active extensions of type fax of the client."""
        user = await self.get_user()
        rows = await self._paged(
            "extensions", {"client_id": user.client_id}, {"type": "fax", "status": "active"}
        )
        exts = [extension_from_row(r) for r in rows]
        # Filter again: a server ignoring the query must not make us poll phones.
        return [e for e in exts if e.type == "fax" and e.status == "active"]

    async def get_extension(self, extension_id: int) -> Extension:
        user = await self.get_user()
        resp = await self._call(
            "GET", "extension", {"client_id": user.client_id, "extension_id": int_id(extension_id)}
        )
        return extension_from_row(json_object(resp))

    async def get_fax_mailto(self, extension_id: int) -> list[str]:
        resp = await self._call("GET", "fax_mailto", {"extension_id": int_id(extension_id)})
        return split_mailto(json_object(resp).get("fax_mailto"))

    async def set_fax_mailto(self, extension_id: int, addresses: Sequence[str]) -> list[str]:
        """PUT the addresses (an empty list clears to null); returns the provider's answer."""
        if isinstance(addresses, str):
            raise TypeError("addresses must be a sequence of strings, not one string")
        cleaned = [a.strip() for a in addresses]
        for a in cleaned:
            if not a or "," in a or any(c.isspace() for c in a):
                raise ValueError(f"invalid address for fax_mailto: {a!r}")
        body = {"fax_mailto": ",".join(cleaned) if cleaned else None}
        resp = await self._call(
            "PUT", "fax_mailto", {"extension_id": int_id(extension_id)}, json_body=body
        )
        return split_mailto(json_object(resp).get("fax_mailto"))

    # ---------------------------------------------------------------- sending
    async def send_fax(
        self, extension_id: int, dst_num: str, document: bytes, filename: str = "fax.pdf",
        *, fence: Callable[[], None] | None = None,
    ) -> SentFax:
        """POST a fax. Never retried: a lost answer raises AmbiguousSubmit.

        ``fence``, when given, is called right before the POST request is
        sent (and before its one repeat after a 401); whatever it raises
        ends the call with nothing sent (docs/provider.md, Several nodes).
        """
        ext = int_id(extension_id)
        if not isinstance(dst_num, str) or not dst_num.strip():
            raise ValueError("dst_num must be a non-empty string")
        if len(document) > MAX_DOCUMENT_BYTES:
            raise DocumentRefused(
                f"document is {len(document)} bytes, the provider takes at most {MAX_DOCUMENT_BYTES}",
                reason="too_large",
            )
        kind = fax_file_kind(document)
        if kind == "unknown":
            raise DocumentRefused("document is neither PDF nor TIFF", reason="unsupported_type")
        # Settle everything that may fail harmlessly (time zone, token, rate
        # limit) before the one request that must not be repeated.
        await self.get_user()
        self._check_blocked()
        ctype = "application/pdf" if kind == "pdf" else "image/tiff"
        started_at = dt.datetime.now(dt.UTC)
        template = self.paths["fax_out"]
        url = self._url("fax_out", {"extension_id": ext})

        def ambiguous(why: str, **kw: Any) -> AmbiguousSubmit:
            return AmbiguousSubmit(
                f"POST {template}: {why}; the fax may have been created",
                extension_id=ext,
                dst_num=dst_num,
                started_at=started_at,
                **kw,
            )

        try:
            resp = await self._authed(
                "POST",
                template,
                url,
                data={"dst_num": dst_num},
                files={"file": (filename, document, ctype)},
                ambiguous=ambiguous,
                fence=fence,
            )
        except (NotFound, Rejected) as exc:
            self._note_path("fax_out", exc.http_status)
            raise
        self._note_path("fax_out", resp.status_code)
        try:
            return self._sent_fax(json_object(resp))
        except (ProviderError, KeyError, TypeError, ValueError):
            # 2xx means created, but without an id we cannot follow it.
            raise ambiguous("unreadable success answer", http_status=resp.status_code) from None

    async def get_sent_fax(self, extension_id: int, fax_id: int) -> SentFax:
        args = {"extension_id": int_id(extension_id), "fax_id": int_id(fax_id)}
        await self._ensure_tz()
        resp = await self._call("GET", "fax_out_one", args)
        return self._sent_fax(json_object(resp))

    async def list_sent_faxes(
        self, extension_id: int, *, since: dt.datetime | None = None
    ) -> list[SentFax]:
        """All faxes sent from the extension, optionally only those at or after ``since``."""
        if since is not None:
            require_aware(since, "since")
        await self._ensure_tz()
        rows = await self._paged("fax_out", {"extension_id": int_id(extension_id)}, {})
        faxes = [self._sent_fax(r) for r in rows]
        if since is not None:
            faxes = [f for f in faxes if f.datetime is None or f.datetime >= since]
        return faxes

    async def retry_fax(self, extension_id: int, fax_id: int) -> SentFax:
        """PUT ?action=retry (allowed from ``failed``)."""
        return await self._action(extension_id, fax_id, "retry", {"ready_to_send", "sending", "sent"})

    async def cancel_fax(self, extension_id: int, fax_id: int) -> SentFax:
        """PUT ?action=cancel (allowed from ``ready_to_send`` and ``failed``)."""
        return await self._action(extension_id, fax_id, "cancel", {"canceled"})

    async def _action(
        self, extension_id: int, fax_id: int, action: str, done_statuses: set[str]
    ) -> SentFax:
        args = {"extension_id": int_id(extension_id), "fax_id": int_id(fax_id)}
        await self._ensure_tz()
        trace = _CallTrace()
        try:
            resp = await self._call("PUT", "fax_out_one", args, params={"action": action}, trace=trace)
        except Rejected:
            # The action is not idempotent: if an earlier attempt's answer was
            # lost it may have worked, and the repeat is refused for the new
            # status. Look before reporting a refusal.
            if not trace.uncertain_attempts:
                raise
            current = await self.get_sent_fax(extension_id, fax_id)
            if current.status in done_statuses:
                return current
            raise
        return self._sent_fax(json_object(resp))

    # -------------------------------------------------------------- receiving
    async def list_received_faxes(
        self, extension_id: int, start: dt.datetime, end: dt.datetime
    ) -> list[IncomingFax]:
        """Faxes received on the extension between start and end (provider's bounds)."""
        require_aware(start, "start")
        require_aware(end, "end")
        await self._ensure_tz()
        params = {
            "start_datetime": start.astimezone(self._tz).strftime(PROVIDER_DATETIME_FORMAT),
            "end_datetime": end.astimezone(self._tz).strftime(PROVIDER_DATETIME_FORMAT),
            "order": "asc",
        }
        rows = await self._paged("fax_in", {"extension_id": int_id(extension_id)}, params)
        return [self._received_fax(r) for r in rows]

    async def download_received_fax(self, extension_id: int, uuid: str) -> FaxFile:
        resp = await self._call(
            "GET", "fax_in_one", {"extension_id": int_id(extension_id), "uuid": uuid_segment(uuid)}
        )
        data = resp.content
        return FaxFile(
            data=data,
            kind=fax_file_kind(data),
            content_type=resp.headers.get("content-type", "application/octet-stream"),
        )

    async def delete_received_fax(self, extension_id: int, uuid: str) -> None:
        await self._call(
            "DELETE", "fax_in_one", {"extension_id": int_id(extension_id), "uuid": uuid_segment(uuid)}
        )

    # ---------------------------------------------------------------- probing
    async def get_raw(
        self, key: str, args: Mapping[str, Any], params: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        """GET one path of the table and return the answer as it came (2xx;
        errors raise as for every call). GET only, so ``gatewayd
        provider-check`` can read a production account without changing it."""
        return await self._call("GET", key, args, params=params)

    # ------------------------------------------------------------ machinery
    async def _ensure_tz(self) -> None:
        # Provider datetimes are wall times in the client's zone: know it first.
        if self._user is None:
            await self.get_user()

    def _url(self, key: str, args: Mapping[str, Any]) -> str:
        path = self.paths[key].format(**{k: quote(str(v), safe="") for k, v in args.items()})
        url = self._base_url + path
        self._check_origin(url)
        return url

    def _check_origin(self, url: str) -> None:
        if origin(url) not in self._allowed:
            raise ProviderError(f"refusing a request to an unconfigured host: {urlsplit(url).netloc}")

    async def _guard_host(self, request: httpx.Request) -> None:
        # Last line of defence: whatever builds the request, credentials go
        # only to the configured hosts.
        self._check_origin(str(request.url))

    def _check_blocked(self) -> None:
        left = self._blocked_until - self._clock()
        if left > 0:
            raise RateLimited(
                f"rate limited by the provider for another {left:.1f} s", retry_after=left, http_status=429
            )

    def _backoff(self, attempt: int) -> float:
        # Exponential backoff with full jitter: spreads retries of many callers.
        return backoff_delay(attempt, base=self._backoff_base, cap=self._backoff_cap, low=0.0, high=1.0, rng=self._random.random)

    async def _call(
        self,
        method: str,
        key: str,
        args: Mapping[str, Any],
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        trace: _CallTrace | None = None,
    ) -> httpx.Response:
        """An idempotent call (GET/PUT/DELETE) with bounded retries."""
        template = self.paths[key]
        url = self._url(key, args)
        trace = trace or _CallTrace()
        waited_for_limit = False
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self._authed(
                    method, template, url, params=params, json_body=json_body
                )
                self._note_path(key, resp.status_code)
                return resp
            except (NotFound, Rejected) as exc:
                self._note_path(key, exc.http_status)
                raise
            except ProviderUnavailable as exc:
                trace.uncertain_attempts += 1
                if attempt >= self._max_attempts:
                    raise
                delay = self._backoff(attempt)
                log.warning(
                    "provider.retrying", method=method, path=template, attempt=attempt,
                    delay=round(delay, 3), error=str(exc),
                )
                await self._sleep(delay)
            except RateLimited as exc:
                # One short wait is cheaper than failing a poll; a long block
                # goes back to the caller, who must not spin on it.
                if waited_for_limit or exc.retry_after > SHORT_RATE_LIMIT_WAIT:
                    raise
                waited_for_limit = True
                await self._sleep(exc.retry_after)

    async def _authed(
        self,
        method: str,
        template: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        data: Mapping[str, str] | None = None,
        files: Mapping[str, Any] | None = None,
        ambiguous: Callable[..., AmbiguousSubmit] | None = None,
        fence: Callable[[], None] | None = None,
    ) -> httpx.Response:
        """One request with a token; on 401 renew the token and repeat once."""
        self._check_blocked()
        token = await self._token()
        send = dict(params=params, json_body=json_body, data=data, files=files,
                    ambiguous=ambiguous, fence=fence)
        resp = await self._send(method, template, url, token, **send)
        if resp.status_code == 401:
            # A 401 means the request was not processed: repeating is safe,
            # even for the fax POST.
            log.info("provider.token_rejected", method=method, path=template)
            token = await self._token(stale=token)
            self._check_blocked()
            resp = await self._send(method, template, url, token, **send)
            if resp.status_code == 401:
                raise self._error(resp, template, AuthError, "token refused twice")
        return self._check(resp, template, ambiguous)

    async def _send(
        self,
        method: str,
        template: str,
        url: str,
        token: str,
        *,
        params: Mapping[str, Any] | None,
        json_body: Any,
        data: Mapping[str, str] | None,
        files: Mapping[str, Any] | None,
        ambiguous: Callable[..., AmbiguousSubmit] | None,
        fence: Callable[[], None] | None = None,
    ) -> httpx.Response:
        if fence is not None:
            # The last moment before the request: nothing but httpx's own
            # preparation (and the connection) lies between this and the wire.
            fence()
        started = time.perf_counter()
        status: int | None = None
        kw: dict[str, Any] = {"headers": {"Authorization": f"Bearer {token}"}}
        if params:
            kw["params"] = params
        if json_body is not None:
            kw["json"] = json_body
        if data is not None:
            kw["data"] = data
        if files is not None:
            kw["files"] = files
        try:
            resp = await self._fetch(method, url, **kw)
            status = resp.status_code
        except _UnreadableAnswer as exc:
            # The provider answered, but not in a form we can hold or read:
            # it may have processed the request.
            why = f"answer unreadable ({exc})"
            self._note_error(f"{method} {template}: {why}")
            if ambiguous is not None:
                raise ambiguous(why) from None
            raise ProviderUnavailable(f"{method} {template}: {why}") from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing left this host: safe to try again later, even a POST.
            why = f"cannot connect ({type(exc).__name__})"
            self._note_error(f"{method} {template}: {why}")
            raise ProviderUnavailable(f"{method} {template}: {why}") from exc
        except httpx.HTTPError as exc:
            # The request may have been processed and the answer lost.
            why = f"answer lost ({type(exc).__name__})"
            self._note_error(f"{method} {template}: {why}")
            if ambiguous is not None:
                raise ambiguous(why) from exc
            raise ProviderUnavailable(f"{method} {template}: {why}") from exc
        finally:
            self._report(method, template, status, time.perf_counter() - started)
        return resp

    async def _fetch(self, method: str, url: str, **kw: Any) -> httpx.Response:
        """One request; the answer read as a stream, at most ``max_response_bytes``
        after decompression (docs/provider.md, "Limits on answers"), and
        returned as a complete ``httpx.Response``."""
        request = self._http.build_request(method, url, **kw)
        resp = await self._http.send(request, stream=True)
        try:
            body = await read_capped(resp, self._max_response_bytes)
        except (ResponseTooLarge, ValueError) as exc:
            raise _UnreadableAnswer(f"HTTP {resp.status_code}, {exc}") from None
        finally:
            await resp.aclose()
        headers = [(k, v) for k, v in resp.headers.multi_items() if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
        return httpx.Response(resp.status_code, headers=headers, content=body, request=request, extensions=resp.extensions)

    def _check(
        self,
        resp: httpx.Response,
        template: str,
        ambiguous: Callable[..., AmbiguousSubmit] | None = None,
    ) -> httpx.Response:
        code = resp.status_code
        method = resp.request.method
        self._note_quota(resp)
        if 200 <= code < 300:
            self._note_success()
            return resp
        if code >= 500:
            err = self._error(resp, template, ProviderUnavailable, "provider error")
            self._note_error(str(err))
            if ambiguous is not None:
                # The provider (an API proxy) answered, but a 5xx does not say
                # whether the fax was stored before the failure: 502/504 are
                # typically the proxy giving up on a busy backend, 500 may
                # follow the commit. Treat all 5xx as "maybe created".
                raise ambiguous(f"HTTP {code}", http_status=code, message=err.message, status=err.status)
            raise err
        if code == 429:
            retry_after = retry_after_seconds(resp)
            self._blocked_until = max(self._blocked_until, self._clock() + retry_after)
            err = self._error(resp, template, RateLimited, "rate limited", retry_after=retry_after)
            self._note_error(str(err))
            log.warning("provider.rate_limited", method=method, path=template, retry_after=retry_after)
            raise err
        if code in (401, 403):
            err = self._error(resp, template, AuthError, "not authorised")
            self._note_error(str(err))
            raise err
        self._note_success()  # a definite answer: the provider is up and takes our token
        if code == 404:
            raise self._error(resp, template, NotFound, "not found")
        raise self._error(resp, template, Rejected, "refused")

    def _error(
        self,
        resp: httpx.Response,
        template: str,
        cls: type[ProviderError],
        what: str,
        **extra: Any,
    ) -> Any:
        message, status = error_fields(resp)
        message = self._scrub(message) if message else None
        status = self._scrub(status) if status else None
        text = f"{resp.request.method} {template}: HTTP {resp.status_code} {what}"
        if status:
            text += f" [{status}]"
        if message:
            text += f": {message}"
        return cls(text, http_status=resp.status_code, message=message, status=status, **extra)

    # ---------------------------------------------------------------- token
    async def _token(self, stale: str | None = None) -> str:
        """A valid token; ``stale`` is one the server refused (forces renewal,
        unless a concurrent call already replaced it)."""
        async with self._token_lock:
            token = self._access_token
            if token is not None and token != stale and self._clock() < self._token_renew_at:
                return token
            return await self._fetch_token()

    async def _fetch_token(self) -> str:
        self._check_blocked()
        asked_at = self._clock()
        started = time.perf_counter()
        status: int | None = None
        try:
            resp = await self._fetch(
                "POST",
                self._token_url,
                data={
                    "grant_type": "client_credentials",
                    "client_id": self._client_id,
                    "client_secret": self._client_secret,
                },
            )
            status = resp.status_code
        except _UnreadableAnswer as exc:
            why = f"token request: answer unreadable ({exc})"
            self._note_error(why)
            raise ProviderUnavailable(why) from None
        except httpx.HTTPError as exc:
            # Asking for a token again is harmless, whatever happened.
            connect = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
            why = f"token request: {'cannot connect' if connect else 'answer lost'} ({type(exc).__name__})"
            self._note_error(why)
            raise ProviderUnavailable(why) from exc
        finally:
            self._report("POST", TOKEN_PATH_LABEL, status, time.perf_counter() - started)
        code = resp.status_code
        if 200 <= code < 300:
            try:
                body = resp.json()
                token = body["access_token"]
                if not isinstance(token, str) or not token:
                    raise ValueError("empty access_token")
                expires_in = float(body.get("expires_in") or 3600)
            except (ValueError, KeyError, TypeError):
                self._note_error("unreadable token answer")
                raise ProviderUnavailable("token endpoint gave an unreadable answer") from None
            self.token_fields = frozenset(body) if isinstance(body, dict) else frozenset()
            self._previous_token, self._access_token = self._access_token, token
            margin = min(TOKEN_RENEW_MARGIN, expires_in / 2)
            self._token_renew_at = asked_at + expires_in - margin
            log.debug("provider.token_renewed", expires_in=expires_in)
            return token
        if code == 429 or code >= 500:
            self._check(resp, TOKEN_PATH_LABEL)  # raises: 429 and 5xx are never a success
        err = self._error(resp, TOKEN_PATH_LABEL, AuthError, "token request refused")
        self._note_error(str(err))
        raise err

    # ----------------------------------------------------------- pagination
    async def _paged(
        self, key: str, args: Mapping[str, Any], params: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        first: list[dict[str, Any]] | None = None
        for page in range(1, MAX_PAGES + 1):
            resp = await self._call(
                "GET", key, args, params={**params, "page": page, "per_page": PAGE_SIZE}
            )
            batch = json_list(resp)
            if first is None:
                first = batch
            elif batch == first:
                break  # the server ignores paging and repeats itself
            items.extend(batch)
            if len(batch) != PAGE_SIZE:
                break
        return items

    # -------------------------------------------------------------- parsing
    def _dt(self, value: Any) -> dt.datetime | None:
        if not value:
            return None
        text = str(value)
        try:
            parsed = dt.datetime.strptime(text, PROVIDER_DATETIME_FORMAT)
        except ValueError:
            try:
                parsed = dt.datetime.fromisoformat(text)
            except ValueError:
                log.warning("provider.bad_datetime", value=text)
                return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=self._tz)

    def _sent_fax(self, row: Mapping[str, Any]) -> SentFax:
        return SentFax(
            id=int(row["id"]),
            dst_num=str(row.get("dst_num") or ""),
            status=str(row.get("status") or ""),
            datetime=self._dt(row.get("datetime")),
        )

    def _received_fax(self, row: Mapping[str, Any]) -> IncomingFax:
        return IncomingFax(
            uuid=str(row["uuid"]),
            caller_id=str(row.get("caller_id") or ""),
            client_id=opt_int(row.get("client_id")),
            datetime=self._dt(row.get("datetime")),
            destination=str(row.get("destination") or ""),
            extension_group_id=opt_int(row.get("extension_group_id")),
            extension_id=int(row["extension_id"]),
            file_size=opt_int(row.get("file_size")),
        )

    # ------------------------------------------------------- health/metrics
    def _note_success(self) -> None:
        self.last_success_at = self._clock()

    def _note_quota(self, resp: httpx.Response) -> None:
        limit = opt_int(resp.headers.get("X-RateLimit-Limit"))
        remaining = opt_int(resp.headers.get("X-RateLimit-Remaining"))
        if limit is not None:
            self.rate_limit_limit = limit
        if remaining is not None:
            self.rate_limit_remaining = remaining

    def _note_path(self, key: str, status: int | None) -> None:
        # 404/405 on one call may be a deleted fax; on consecutive calls it is
        # most likely a wrong path (an inferred one, docs/provider.md).
        if status in (404, 405):
            _, count = self.failing_paths.get(key, (status, 0))
            self.failing_paths[key] = (status, count + 1)
        elif status is not None and 200 <= status < 300:
            self.failing_paths.pop(key, None)

    def _note_error(self, text: str) -> None:
        self.last_error = self._scrub(text)
        self.last_error_at = self._clock()

    def _report(self, method: str, template: str, status: int | None, seconds: float) -> None:
        log.debug("provider.request", method=method, path=template, status=status,
                  seconds=round(seconds, 4))
        if self._on_request is not None:
            try:
                self._on_request(method, template, status, seconds)
            except Exception:  # metrics must never break a provider call
                log.exception("provider.on_request_failed")

    def _scrub(self, text: str) -> str:
        for secret in (self._client_secret, self._access_token, self._previous_token):
            if secret:
                text = text.replace(secret, "***")
        return text


@dataclass
class _CallTrace:
    """Per-call facts the retry loop learns (mutable, never shared)."""

    uncertain_attempts: int = 0  # attempts that failed without a definite answer
