"""A fast SMTP DATA reader: large chunks, streaming dot-unstuffing, optional spool.

The SMTP listener (``FaxSMTP._read_data``) reads DATA with it. aiosmtpd
reads DATA one line at a time, un-stuffs each line in Python and keeps the
message as a list of line objects: at 1 MB that was the bottleneck of the
whole intake, and a 10 MB attachment cost tens of MB of RSS per session.
``read_data`` instead:

* asks the ``asyncio.StreamReader`` for everything up to the terminator
  ``CRLF . CRLF`` with ``readuntil`` (a C-level search of the buffer), taking
  the data in pieces of up to ``chunk_limit`` bytes when the terminator is
  not there yet. ``readuntil`` never consumes a byte past the terminator, so
  commands a client pipelines after the final dot stay in the reader, and a
  terminator split across two network reads is still found;
* un-stuffs each piece with one ``bytes.replace(b"\\r\\n.", b"\\r\\n")`` over
  the piece and the two bytes before it (RFC 5321 section 4.5.2: the first
  character of a line is deleted when it is a period), including the very
  first line of the message;
* counts the un-stuffed size as it goes: past ``limit`` it stops storing but
  keeps reading to the terminator, so the client gets ``552`` instead of a
  broken connection;
* notices a bare LF (an LF not preceded by CR) anywhere, also across pieces,
  and with ``normalize_bare_lf`` stores it as CRLF (``smtp.bare_lf =
  "normalize"``, as Postfix 3.9's ``smtpd_forbid_bare_newline =
  normalize``): the end of DATA stays ``CRLF . CRLF`` exactly as received,
  so ``LF . LF``, ``CRLF . LF`` and ``LF . CRLF`` are data, never the end
  (no SMTP smuggling; docs/smtp.md, Line endings);
* keeps the message in memory, or past ``spool_threshold`` bytes in an
  anonymous temporary file (``O_TMPFILE`` where the OS has it: nothing is
  left behind by a crash) in ``spool_dir``. A spool that cannot be written
  (disk full) is remembered in ``DataBody.error``; the data is still read to
  the end, and the caller answers ``451``.

``IntakeGate`` bounds how many bytes of message are being turned into a fax
at once (parse, document build): with spooled bodies, 20 sessions each
sending 10 MB no longer hold 20 messages and their parse trees in memory.

The semantics are those of a line-by-line reader (RFC 5321 section 4.5.2;
tests/reliability/test_fastdata.py compares the two): the size is counted on
the un-stuffed bytes including line ends, and CRLF is the only line end, so
a dot after a bare LF is data (kept, not un-stuffed, also when the LF is
normalised). See docs/performance.md for the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import BinaryIO

__all__ = ["DataBody", "IntakeGate", "read_data", "unstuff", "SEPARATOR"]

SEPARATOR = b"\r\n.\r\n"
# A LF not preceded by CRLF's CR (bare), or a LF followed by a dot: what makes
# a piece need more than storing as it is. Starts with a literal, so the
# search skips from LF to LF in C (~0.5 ms per MB).
_SPECIAL = re.compile(rb"\n(?:(?<!\r\n)|\.)")
_BARE_LF = re.compile(rb"(?<!\r)\n")
DEFAULT_CHUNK_LIMIT = 256 * 1024


def unstuff(stuffed: bytes) -> bytes:
    """Reference un-stuffing of a whole body (without its final ``.CRLF``)."""
    return (b"\r\n" + stuffed).replace(b"\r\n.", b"\r\n")[2:]


@dataclass
class DataBody:
    """The DATA of one transaction, un-stuffed."""

    size: int = 0  # un-stuffed bytes, line ends included (what max_message_size limits)
    too_big: bool = False
    bare_lf: bool = False
    error: OSError | None = None  # the spool could not be written: answer 451
    _memory: io.BytesIO | None = field(default_factory=io.BytesIO, repr=False)
    _file: BinaryIO | None = field(default=None, repr=False)

    @property
    def stored(self) -> bool:
        """Whether the content was kept (not too big, no spool error)."""
        return not self.too_big and self.error is None and (self._memory is not None or self._file is not None)

    @property
    def spooled(self) -> bool:
        return self._file is not None

    def read(self) -> bytes:
        """The whole message as bytes (blocking file read when spooled)."""
        if not self.stored:
            raise ValueError("the message was not kept (too big or spool error)")
        if self._file is not None:
            self._file.seek(0)
            return self._file.read()
        assert self._memory is not None
        return self._memory.getvalue()

    async def aread(self) -> bytes:
        """``read`` off the event loop when the body is on disk."""
        if self._file is not None:
            return await asyncio.to_thread(self.read)
        return self.read()

    def close(self) -> None:
        """Drop the content (the spool file disappears with it)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self._memory = None


class _Sink:
    """Where un-stuffed pieces go: memory, then spool, or nowhere."""

    def __init__(self, body: DataBody, limit: int, spool_threshold: int | None, spool_dir: str | os.PathLike[str] | None) -> None:
        self.body = body
        self.limit = limit
        self.spool_threshold = spool_threshold
        self.spool_dir = spool_dir
        self.storing = True

    def write(self, data: bytes) -> None:
        body = self.body
        body.size += len(data)
        if not self.storing:
            return
        if self.limit and body.size > self.limit:
            # Only confirmed content is written here (never a byte of the
            # terminator), so the size is exact: stop storing now.
            self.drop()
            return
        try:
            if body._file is not None:
                body._file.write(data)
                return
            assert body._memory is not None
            body._memory.write(data)
            if self.spool_threshold is not None and body._memory.tell() > self.spool_threshold:
                self._spool()
        except OSError as exc:
            body.error = exc
            self.drop()

    def _spool(self) -> None:
        body = self.body
        assert body._memory is not None
        spool = tempfile.TemporaryFile(dir=self.spool_dir, prefix=".data-")
        try:
            spool.write(body._memory.getbuffer())
        except BaseException:
            spool.close()
            raise
        body._file = spool
        body._memory = None

    def drop(self) -> None:
        self.storing = False
        self.body.close()


async def read_data(
    reader: asyncio.StreamReader,
    *,
    limit: int = 0,
    spool_threshold: int | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    chunk_limit: int = DEFAULT_CHUNK_LIMIT,
    on_activity: Callable[[], None] | None = None,
    normalize_bare_lf: bool = False,
) -> DataBody:
    """Read one DATA body (after ``354``) up to and including ``CRLF.CRLF``.

    ``limit``: the most un-stuffed bytes kept (0: no limit); past it the body
    is read to the end and ``too_big`` set. ``spool_threshold``: past this
    many bytes the body moves from memory to a temporary file in
    ``spool_dir``. ``on_activity`` is called whenever data arrived (reset an
    idle timeout there). Raises ``ConnectionResetError`` when the client goes
    away before the terminator.
    """
    body = DataBody()
    sink = _Sink(body, limit, spool_threshold, spool_dir)
    # The state of the raw (stuffed) stream, as if it started with CRLF.
    prev2 = b"\r\n"  # last two raw bytes fed (context for un-stuffing)
    last_out = b"\n"  # last un-stuffed byte stored (context for normalising)
    bare = False

    def feed(raw: bytes) -> None:
        nonlocal prev2, bare, last_out
        if not raw:
            return
        joined = prev2 + raw
        # The common piece has no LF without its CR and no dot at a line
        # start: one scan (from the LF that may end prev2) proves it, and the
        # piece is stored as it is. Otherwise the exact work below.
        if _SPECIAL.search(joined, 1) is None:
            sink.write(raw)
            prev2 = joined[-2:]
            last_out = raw[-1:]
            return
        # A LF is bare unless a CR precedes it (inside the piece, or as the last byte before it).
        lfs = raw.count(b"\n")
        piece_bare = False
        if lfs:
            paired = raw.count(b"\r\n") + (1 if prev2[-1:] == b"\r" and raw[:1] == b"\n" else 0)
            piece_bare = lfs > paired
            bare = bare or piece_bare
        # A dot right after CRLF is a stuffing dot: delete it (the terminator never gets here).
        out = joined.replace(b"\r\n.", b"\r\n")[2:] if b"\r\n." in joined else raw
        if piece_bare and normalize_bare_lf and out:
            # Un-stuffing never puts a CR before a LF, so the bare LFs of the
            # output are those of the input; the first one's CR may be the
            # last byte already stored.
            if out[:1] == b"\n" and last_out == b"\r":
                out = b"\n" + _BARE_LF.sub(b"\r\n", out[1:])
            else:
                out = _BARE_LF.sub(b"\r\n", out)
        if out:
            sink.write(out)
            last_out = out[-1:]
        prev2 = joined[-2:]

    async def byte() -> bytes:
        try:
            b = await reader.readexactly(1)
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("connection closed during DATA") from None
        if on_activity is not None:
            on_activity()
        return b

    # Raise the reader's limit for the DATA phase (aiosmtpd's is 1001 bytes:
    # one piece per KB and the transport paused every 2 KB). A private
    # attribute, stable since Python 3.4; without it we are only slower.
    old_limit = getattr(reader, "_limit", None)
    raised = isinstance(old_limit, int) and old_limit < chunk_limit
    if raised:
        reader._limit = chunk_limit  # type: ignore[attr-defined]  # private, see above
    try:
        # The message starts at a line start (prev2 is CRLF), so an empty
        # message's terminator is ".CRLF" at the very first byte, which the
        # search below (for CRLF.CRLF in the unread bytes) would miss.
        # Resolve the start byte by byte, until the bytes fed end with no
        # prefix of CRLF.CRLF (a few bytes, once per message).
        while prev2.endswith(b"\r") or prev2 == b"\r\n":
            if prev2 == b"\r\n":
                b = await byte()
                if b != b".":
                    feed(b)
                    continue
                b2 = await byte()
                if b2 != b"\r":
                    feed(b + b2)
                    continue
                b3 = await byte()
                if b3 == b"\n":
                    return _finish(body, sink, bare, limit)
                feed(b + b2 + b3)
            else:  # a lone CR: only "\n.\r\n" can follow to end the message here
                b = await byte()
                if b != b"\n":
                    feed(b)
                    continue
                feed(b)  # now prev2 == CRLF: the branch above decides
        # Bulk: readuntil stops exactly after the terminator; when it is not
        # in the buffer yet, take what is certainly not part of it.
        while True:
            try:
                piece = await reader.readuntil(SEPARATOR)
            except asyncio.LimitOverrunError as exc:
                # exc.consumed bytes contain no terminator start (readuntil
                # keeps the last len(SEPARATOR)-1 bytes): feed them as they are.
                try:
                    piece = await reader.readexactly(exc.consumed)
                except asyncio.IncompleteReadError:
                    raise ConnectionResetError("connection closed during DATA") from None
                if on_activity is not None:
                    on_activity()
                feed(piece)
                continue
            except asyncio.IncompleteReadError:
                raise ConnectionResetError("connection closed during DATA") from None
            if on_activity is not None:
                on_activity()
            feed(piece[:-3])  # the CRLF before the dot is the last line's end
            return _finish(body, sink, bare, limit)
    except BaseException:
        body.close()
        raise
    finally:
        if raised:
            reader._limit = old_limit  # type: ignore[attr-defined]  # private, see above


def _finish(body: DataBody, sink: _Sink, bare: bool, limit: int) -> DataBody:
    body.bare_lf = bare
    if limit and body.size > limit:
        body.too_big = True
        sink.drop()
    elif body._file is not None:
        try:
            body._file.flush()
        except OSError as exc:
            body.error = exc
            sink.drop()
    return body


class IntakeGate:
    """At most ``budget`` bytes of message being turned into faxes at once.

    A message larger than the whole budget still gets through, alone. FIFO
    among waiters of any size, so a big message is not starved by small ones.
    """

    def __init__(self, budget: int) -> None:
        if budget < 1:
            raise ValueError("budget must be positive")
        self.budget = budget
        self.in_use = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        size = max(1, int(size))
        await self._acquire(size)
        try:
            yield
        finally:
            self.in_use -= size
            self._wake()

    def _fits(self, size: int) -> bool:
        return self.in_use == 0 or self.in_use + size <= self.budget

    async def _acquire(self, size: int) -> None:
        if not self._waiters and self._fits(size):
            self.in_use += size
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, fut)
        self._waiters.append(entry)
        try:
            await fut
        except BaseException:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif fut.done() and not fut.cancelled():
                # Granted just as we were cancelled: give it back.
                self.in_use -= size
                self._wake()
            raise

    def _wake(self) -> None:
        while self._waiters:
            size, fut = self._waiters[0]
            if fut.done():
                self._waiters.pop(0)
                continue
            if not self._fits(size):
                return
            self._waiters.pop(0)
            self.in_use += size
            fut.set_result(None)
