"""Reading the provider's wire format: JSON bodies, ids, error fields, rate-limit headers (docs/provider.md)."""

from __future__ import annotations

import datetime as dt
import math
import re
import time
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from gatewayd.provider.errors import ProviderUnavailable
from gatewayd.provider.results import Extension

__all__ = [
    "error_fields",
    "extension_from_row",
    "int_id",
    "json_body",
    "json_list",
    "json_object",
    "opt_int",
    "origin",
    "require_aware",
    "read_capped",
    "retry_after_seconds",
    "split_mailto",
    "uuid_segment",
    "DEFAULT_RATE_LIMIT_WAIT",
    "MAX_RATE_LIMIT_WAIT",
    "MAX_RESPONSE_BYTES",
    "SAFE_SEGMENT",
    "ResponseTooLarge",
]

DEFAULT_RATE_LIMIT_WAIT = 60.0  # 429 without a usable X-RateLimit-Reset
# The longest wait a 429 can impose: a hostile or broken reset value must
# not stop sending for days (docs/provider.md, "Limits on answers").
MAX_RATE_LIMIT_WAIT = 3600.0
# The most bytes of one answer, after decompression: a received fax is at
# most a few MiB; a gzip bomb must not exhaust memory (docs/provider.md).
MAX_RESPONSE_BYTES = 64 << 20
SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._~-]+$")


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (parts.scheme, parts.hostname.lower(), port)


def int_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"an integer id is required, not {value!r}")
    return int(value)


def uuid_segment(value: str) -> str:
    # Provider uuids go into a path segment: no slashes or dot-segments.
    if not isinstance(value, str) or not SAFE_SEGMENT.match(value) or set(value) <= {"."}:
        raise ValueError(f"not a valid received-fax id: {value!r}")
    return value


def opt_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def require_aware(value: dt.datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a time-zone aware datetime")


def split_mailto(value: Any) -> list[str]:
    if not value:
        return []
    return [a.strip() for a in str(value).split(",") if a.strip()]


def extension_from_row(row: Mapping[str, Any]) -> Extension:
    return Extension(
        id=int(row["id"]),
        name=str(row.get("name") or ""),
        label=row.get("label"),
        type=str(row.get("type") or ""),
        status=str(row.get("status") or ""),
        extension_group_id=opt_int(row.get("extension_group_id")),
        client_id=opt_int(row.get("client_id")),
    )


def json_body(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise ProviderUnavailable(
            f"{resp.request.method} {resp.request.url.path}: HTTP {resp.status_code} with a body that is not JSON",
            http_status=resp.status_code,
        ) from None


def json_object(resp: httpx.Response) -> dict[str, Any]:
    data = json_body(resp)
    if not isinstance(data, dict):
        raise ProviderUnavailable(f"expected a JSON object, got {type(data).__name__}")
    return data


def json_list(resp: httpx.Response) -> list[dict[str, Any]]:
    data = json_body(resp)
    if isinstance(data, dict):
        # Tolerate an envelope; the documented answer is a bare list.
        for key in ("items", "data", "results"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise ProviderUnavailable("expected a JSON list of objects")
    return data


def error_fields(resp: httpx.Response) -> tuple[str | None, str | None]:
    try:
        body = resp.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    message = body.get("message") or body.get("error_description") or body.get("error")
    status = body.get("status") or body.get("error")
    return (str(message)[:500] if message else None, str(status)[:100] if status else None)


def retry_after_seconds(resp: httpx.Response) -> float:
    """Seconds to wait after a 429: finite, at most ``MAX_RATE_LIMIT_WAIT``."""
    for header in ("X-RateLimit-Reset", "Retry-After"):
        value = resp.headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        if not math.isfinite(seconds):
            continue  # "inf", "nan", "1e400": no wait at all is known
        if seconds > 1e9:  # an epoch timestamp after all, not "seconds until"
            seconds -= time.time()
        if seconds >= 0:
            return min(seconds, MAX_RATE_LIMIT_WAIT)
    return DEFAULT_RATE_LIMIT_WAIT


class ResponseTooLarge(Exception):
    """An answer's body (decompressed) is over the cap; the reading stopped there."""


async def read_capped(resp: httpx.Response, limit: int) -> bytes:
    """The body of a streamed ``resp``, decompressed, refusing more than ``limit`` bytes.

    The gzip decoder is given at most what is left under the cap each time,
    so a bomb costs ``limit`` bytes of memory, never its full size. Only
    ``gzip`` and ``identity`` are accepted (the client asks for gzip only).
    Raises ``ResponseTooLarge``, or ``ValueError`` for an unknown encoding or
    corrupt gzip.
    """
    try:
        # Already in memory (an in-process transport builds its answers whole).
        whole = resp.content
    except httpx.ResponseNotRead:
        pass
    else:
        if len(whole) > limit:
            raise ResponseTooLarge(f"larger than {limit} bytes")
        return whole
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        decoder = None
    elif encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    else:
        raise ValueError(f"unsupported Content-Encoding {encoding[:40]!r}")
    out = bytearray()
    try:
        async for raw in resp.aiter_raw():
            if decoder is None:
                out += raw
                if len(out) > limit:
                    raise ResponseTooLarge(f"larger than {limit} bytes")
                continue
            data = raw
            while data:
                out += decoder.decompress(data, limit + 1 - len(out))
                if len(out) > limit:
                    raise ResponseTooLarge(f"larger than {limit} bytes (decompressed)")
                data = decoder.unconsumed_tail
        if decoder is not None:
            out += decoder.flush()
            if len(out) > limit:
                raise ResponseTooLarge(f"larger than {limit} bytes (decompressed)")
    except zlib.error as exc:
        raise ValueError(f"corrupt gzip body: {exc}") from None
    return bytes(out)
