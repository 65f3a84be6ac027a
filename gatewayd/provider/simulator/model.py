"""The provider simulator's model: one account's extensions, tokens and faxes, the sent-fax state machine, and its clock (docs/provider.md, Account model and Behaviour)."""

from __future__ import annotations

import datetime as dt
import fnmatch
import io
import itertools
import time
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple
from zoneinfo import ZoneInfo

from aiohttp import web

from gatewayd.provider.paths import merged_paths
from gatewayd.provider.simulator.faults import Fault

__all__ = ["API_PREFIX", "DATETIME_FORMAT", "FIRST_FAX_ID", "MAX_FILE_BYTES", "OUTCOMES", "RATE_WINDOW", "STATUSES", "TOKEN_PATH", "LoggedRequest", "SimAccount", "SimClock", "SimExtension", "SimReceivedFax", "SimSentFax", "count_pages", "file_kind"]


API_PREFIX = "/api/ver1.0"
TOKEN_PATH = "/oauth/token"
MAX_FILE_BYTES = 10_000_000
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
STATUSES = ("ready_to_send", "sending", "sent", "failed", "canceled", "error")
OUTCOMES = ("sent", "failed", "error")
RATE_WINDOW = 3600.0
FIRST_FAX_ID = 174  # the provider's documented examples start around here


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


def count_pages(data: bytes, kind: str) -> int | None:
    """Pages of a PDF (pikepdf) or frames of a TIFF (Pillow); None if unreadable."""
    try:
        # Lazy imports, kept from before the split: pikepdf and Pillow load only when a fax is uploaded (start-up speed).
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


def file_kind(data: bytes) -> str:
    if data.startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(b"II*\x00") or data.startswith(b"MM\x00*"):
        return "tiff"
    return "unknown"


class SimAccount:
    """The state of one client account (id 12): extensions, tokens, sent and
    received faxes, faults, the request log, and the in-process API tests use
    to drive it. The HTTP side is added by the subclasses in handlers.py,
    control.py and app.py."""

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
        paths: Mapping[str, str] | None = None,
    ) -> None:
        # The path table it serves: the client's defaults with the same
        # [provider.paths] overrides (an overridden path is served instead of
        # its default, as a provider would), docs/provider.md.
        self.paths = merged_paths(paths)
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
        self.deleted_received: list[str] = []  # uuids DELETEd through the API, in order
        self.outcomes: dict[str, list[str]] = {}
        self.faults: list[Fault] = []
        self._next_fax_id = FIRST_FAX_ID
        self._window_start: float | None = None
        self._window_count = 0
        self.add_extension(100, type="phone")
        self.add_extension(122, fax_mailto="admin@example.test")
        self.add_extension(123)

    def set_next_fax_id(self, fax_id: int) -> None:
        """The next fax sent gets this id, the ones after it count on from there.
        A fax that had the id is replaced: a provider that forgot its old faxes
        (an account reset, a test account swapped for the production one)."""
        if isinstance(fax_id, bool) or not isinstance(fax_id, int) or fax_id < 1:
            raise ValueError("the next fax id must be a positive integer")
        self._next_fax_id = fax_id

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
        kind = file_kind(data)
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
