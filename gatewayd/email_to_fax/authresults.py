"""Authentication-Results (RFC 8601): who vouches that a mailbox message is genuine.

A message fetched from the IMAP mailbox has no SMTP session to authenticate,
so its ``From:`` is only believed when the receiving MTA says so
(docs/imap.md, Who is believed; docs/security.md): an ``Authentication-Results`` header written by the MTA whose
authserv-id is ``imap.trusted_authserv_id`` must show ``dmarc=pass``, or
``spf=pass`` / ``dkim=pass`` for a domain aligned with the ``From:`` domain.

Which header is read -- the security argument (also in docs/imap.md):

* Anyone can put an ``Authentication-Results`` header into a message, with
  any authserv-id. Headers with other ids are ignored outright.
* The MTA prepends its header (RFC 8601 section 2: it is a trace field), so
  whatever the sender wrote sits *below* it. Only the **topmost** header with
  the trusted id is read; trusted-id headers further down are never looked
  at, so a forged ``dmarc=pass`` below a genuine ``dmarc=fail`` changes
  nothing. Headers with other ids above it (a later filter on the path) are
  skipped, not counted.
* That alone is not enough when the MTA sometimes adds no header at all
  (then a forged one would be the topmost). RFC 8601 section 5 requires the
  MTA to delete incoming headers that claim its own authserv-id; the
  deployment must do so (docs/imap.md shows how to check).
* The chosen header is parsed strictly, from the raw header bytes: never
  after RFC 2047 decoding, which would turn text the sender controls inside
  the MTA's own header (the envelope local part, the HELO name, a DKIM
  ``i=``) into new statements (``rawheaders.py``). An encoded word there is
  a syntax error (``?`` is a special). If the header is malformed the
  message is not authenticated: never fall back to a header further down.

Alignment is "relaxed" without a public suffix list: the two domains are
equal, or one is a subdomain of the other (and the shorter has at least two
labels). The parent direction is safe because a pass for ``example.com``
needs DNS records only the owner of ``example.com`` controls, and that owner
controls its subdomains anyway; unrelated siblings (``a.example.com`` vs
``b.example.com``) are not aligned, which only errs on the side of refusing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AuthResults",
    "AuthResultsSyntaxError",
    "AuthVerdict",
    "ResultInfo",
    "authserv_id_of",
    "domains_aligned",
    "parse_authentication_results",
    "verify_sender",
]


class AuthResultsSyntaxError(ValueError):
    """An Authentication-Results value that does not follow RFC 8601."""


@dataclass(frozen=True)
class ResultInfo:
    """One ``method=result`` statement with its properties (all keys lowercased)."""

    method: str  # e.g. "dkim"; a method version ("dkim/1") is dropped
    result: str  # e.g. "pass"
    reason: str | None
    properties: tuple[tuple[str, str, str], ...]  # (ptype, property, value), e.g. ("header", "d", "example.com")

    def values(self, ptype: str, prop: str) -> tuple[str, ...]:
        return tuple(v for t, p, v in self.properties if t == ptype and p == prop)


@dataclass(frozen=True)
class AuthResults:
    authserv_id: str  # as written; compare case-insensitively
    version: int | None
    results: tuple[ResultInfo, ...]  # empty for "none"


@dataclass(frozen=True)
class AuthVerdict:
    """Whether the trusted MTA vouches for the From: domain, and why (for the logs)."""

    passed: bool
    method: str | None  # "dmarc" | "spf" | "dkim" when passed
    why: str
    # How many headers carry the trusted id. More than one means the MTA
    # let an incoming one through (or the message passed it twice): only
    # the topmost was read, but the deployment should be fixed.
    trusted_headers: int = 0


# --------------------------------------------------------------- tokenizer

# RFC 2045 tspecials plus "/" and "=" which RFC 8601 uses as separators; "."
# and "@" stay inside words so "smtp.mailfrom" and "user@example.com" are one
# word each (the property name is split on its first "." afterwards).
_SPECIALS = frozenset('()<>,;:\\"/[]?=')
_WSP = frozenset(" \t\r\n")


@dataclass(frozen=True)
class _Tok:
    kind: str  # "word" | "quoted" | one of ";", "=", "/"
    text: str
    glued: bool = False  # no blank or comment between it and the previous token


def _tokenize(value: str) -> list[_Tok]:
    """Words, quoted strings and the separators ``;`` ``=`` ``/``; CFWS dropped."""
    toks: list[_Tok] = []
    i, n = 0, len(value)
    glued = False
    while i < n:
        c = value[i]
        if c in _WSP:
            i += 1
            glued = False
            continue
        if c == "(":
            i = _skip_comment(value, i)
            glued = False
            continue
        if c == '"':
            text, i = _quoted(value, i)
            toks.append(_Tok("quoted", text, glued))
        elif c in ";=/":
            toks.append(_Tok(c, c, glued))
            i += 1
        elif c in _SPECIALS:
            raise AuthResultsSyntaxError(f"unexpected {c!r} at offset {i}")
        elif ord(c) < 32 or ord(c) == 127:
            raise AuthResultsSyntaxError(f"control character at offset {i}")
        else:
            start = i
            while i < n and value[i] not in _WSP and value[i] not in _SPECIALS and ord(value[i]) >= 32 and ord(value[i]) != 127:
                i += 1
            toks.append(_Tok("word", value[start:i], glued))
        glued = True
    return toks


def _skip_comment(value: str, i: int) -> int:
    """Index after the (possibly nested) comment starting at ``value[i] == "("``."""
    depth = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise AuthResultsSyntaxError("unterminated comment")


def _quoted(value: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    i += 1
    n = len(value)
    while i < n:
        c = value[i]
        if c == "\\":
            if i + 1 >= n:
                break
            out.append(value[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise AuthResultsSyntaxError("unterminated quoted string")


# ------------------------------------------------------------------ parser


def authserv_id_of(value: str) -> str | None:
    """The authserv-id of a header value, or None when it has none.

    Used to pick the header before it is parsed in full: a header whose id
    cannot be read belongs to nobody we trust. A value that starts with a
    ``method=`` statement has no authserv-id (Microsoft 365 writes such
    headers, against RFC 8601 section 2.5): None, never a match.
    """
    try:
        toks = _tokenize(value)
    except AuthResultsSyntaxError:
        return None
    if not toks or toks[0].kind not in ("word", "quoted"):
        return None
    if len(toks) > 1 and toks[1].kind in ("=", "/"):
        return None
    return toks[0].text or None


def parse_authentication_results(value: str) -> AuthResults:
    """Parse one header value (unfolded or not), strictly.

    ``authserv-id [version] ( "; none" / 1*( ";" method[/ver]=result
    [reason=value] *(ptype.property=value) ) )``. A trailing ";" is
    tolerated (several MTAs write one); anything else out of place raises
    ``AuthResultsSyntaxError``.
    """
    toks = _tokenize(value)
    pos = 0

    def peek(k: int = 0) -> _Tok | None:
        return toks[pos + k] if pos + k < len(toks) else None

    first = peek()
    if first is None or first.kind not in ("word", "quoted") or not first.text:
        raise AuthResultsSyntaxError("missing authserv-id")
    nxt = peek(1)
    if nxt is not None and nxt.kind in ("=", "/"):
        raise AuthResultsSyntaxError("missing authserv-id")
    authserv_id = first.text
    pos = 1
    version: int | None = None
    tok = peek()
    if tok is not None and tok.kind == "word" and tok.text.isdigit():
        version = int(tok.text)
        pos += 1

    results: list[ResultInfo] = []
    saw_none = False
    while pos < len(toks):
        tok = peek()
        if tok is None or tok.kind != ";":
            raise AuthResultsSyntaxError(f"expected ';' before {tok.text if tok else 'end'!r}")
        pos += 1
        if peek() is None:
            break  # trailing ";"
        after = peek(1)
        if after is None or after.kind == ";":
            word = peek()
            if word is not None and word.kind == "word" and word.text.lower() == "none":
                saw_none = True
                pos += 1
                continue
        info, pos = _resinfo(toks, pos)
        results.append(info)
    if saw_none and results:
        raise AuthResultsSyntaxError("'none' together with results")
    if not saw_none and not results:
        raise AuthResultsSyntaxError("no results")
    return AuthResults(authserv_id=authserv_id, version=version, results=tuple(results))


def _keyword(tok: _Tok | None, what: str) -> str:
    if tok is None or tok.kind != "word" or not tok.text:
        raise AuthResultsSyntaxError(f"expected {what}")
    text = tok.text
    # Keyword = ALPHA / DIGIT / "-" ... (RFC 8601 uses RFC 5321's Keyword): no dots, no "@".
    if not all(c.isascii() and (c.isalnum() or c in "-_") for c in text):
        raise AuthResultsSyntaxError(f"bad {what} {text!r}")
    return text.lower()


def _resinfo(toks: list[_Tok], pos: int) -> tuple[ResultInfo, int]:
    def at(k: int) -> _Tok | None:
        return toks[k] if k < len(toks) else None

    def kind_at(k: int) -> str | None:
        return toks[k].kind if k < len(toks) else None

    method = _keyword(at(pos), "a method")
    pos += 1
    if kind_at(pos) == "/":
        pos += 1
        ver = at(pos)
        if ver is None or ver.kind != "word" or not ver.text.isdigit():
            raise AuthResultsSyntaxError(f"bad version of method {method!r}")
        pos += 1
    if kind_at(pos) != "=":
        raise AuthResultsSyntaxError(f"expected '=' after method {method!r}")
    pos += 1
    result = _keyword(at(pos), f"a result for {method!r}")
    pos += 1

    reason: str | None = None
    props: list[tuple[str, str, str]] = []
    while kind_at(pos) not in (None, ";"):
        key_tok = at(pos)
        if key_tok is None or key_tok.kind != "word":
            raise AuthResultsSyntaxError("expected a property")
        if kind_at(pos + 1) != "=":
            raise AuthResultsSyntaxError(f"expected '=' after {key_tok.text!r}")
        val_tok = at(pos + 2)
        if val_tok is None or val_tok.kind not in ("word", "quoted"):
            raise AuthResultsSyntaxError(f"expected a value for {key_tok.text!r}")
        key = key_tok.text.lower()
        pos += 3
        # A value is one token by the grammar, but verifiers write base64
        # fragments unquoted (Gmail: "header.b=Ab/cd+e="): pieces glued to
        # the value without a blank belong to it.
        text = val_tok.text
        while (piece := at(pos)) is not None and piece.glued and piece.kind in ("word", "quoted", "/", "="):
            text += piece.text
            pos += 1
        if key == "reason":
            if reason is not None or props:
                raise AuthResultsSyntaxError("reason must come once, before the properties")
            reason = text
            continue
        ptype, dot, prop = key.partition(".")
        if not dot or not ptype or not prop:
            # Not ptype.property: e.g. Microsoft's "action=none". Kept out of
            # the properties (it is nobody's identity) but not fatal: such a
            # header is only ever read when its id is the trusted one.
            continue
        props.append((ptype, prop, text))
    return ResultInfo(method=method, result=result, reason=reason, properties=tuple(props)), pos


# -------------------------------------------------------------- alignment


def _domain(value: str) -> str:
    """The domain of ``user@domain``, ``@domain`` or ``domain``, lowercased."""
    domain = value.rpartition("@")[2].strip().lower().rstrip(".")
    return domain


def domains_aligned(a: str, b: str) -> bool:
    """Relaxed alignment without a public suffix list (see the module docstring)."""
    a, b = _domain(a), _domain(b)
    if not a or not b or "." not in a or "." not in b:
        return False
    if a == b:
        return True
    shorter, longer = (a, b) if len(a) < len(b) else (b, a)
    return longer.endswith("." + shorter)


# ------------------------------------------------------------------ verdict


def verify_sender(headers: Sequence[str], trusted_authserv_id: str, from_addr: str | None) -> AuthVerdict:
    """Does the trusted MTA vouch for ``from_addr``'s domain?

    ``headers`` are the Authentication-Results values in message order (top
    first). Only the topmost header whose authserv-id equals
    ``trusted_authserv_id`` (case-insensitive) is read; see the module
    docstring for why. Passing statements, any one suffices:

    * ``dmarc=pass`` whose ``header.from`` is the From: domain (a pass
      without ``header.from`` is not one);
    * ``spf=pass`` whose ``smtp.mailfrom`` domain is aligned with it (an SPF
      pass for only the HELO name is not);
    * ``dkim=pass`` whose ``header.d`` (or, without it, ``header.i``) is
      aligned with it.
    """
    trusted = trusted_authserv_id.strip().lower()
    if not trusted:
        return AuthVerdict(False, None, "no trusted authserv-id configured")
    if not from_addr or "@" not in from_addr:
        return AuthVerdict(False, None, "no single From: address")
    from_domain = _domain(from_addr)
    trusted_values = [v for v in headers if (ident := authserv_id_of(v)) is not None and ident.lower() == trusted]
    count = len(trusted_values)
    if not trusted_values:
        return AuthVerdict(False, None, f"no Authentication-Results from {trusted_authserv_id}")
    chosen = trusted_values[0]  # the topmost: see the module docstring
    try:
        parsed = parse_authentication_results(chosen)
    except AuthResultsSyntaxError as exc:
        return AuthVerdict(False, None, f"malformed Authentication-Results from {trusted_authserv_id}: {exc}", count)

    for info in parsed.results:
        if info.result != "pass":
            continue
        if info.method == "dmarc":
            # A dmarc=pass says nothing about our From: unless it names its
            # domain: without header.from it could be about any domain.
            header_from = info.values("header", "from")
            if header_from and all(_domain(h) == from_domain for h in header_from):
                return AuthVerdict(True, "dmarc", f"dmarc=pass for {from_domain}", count)
        elif info.method == "spf":
            for mailfrom in info.values("smtp", "mailfrom"):
                if domains_aligned(mailfrom, from_domain):
                    return AuthVerdict(True, "spf", f"spf=pass for {_domain(mailfrom)}, aligned with {from_domain}", count)
        elif info.method == "dkim":
            signers = info.values("header", "d") or info.values("header", "i")
            for signer in signers:
                if domains_aligned(signer, from_domain):
                    return AuthVerdict(True, "dkim", f"dkim=pass for {_domain(signer)}, aligned with {from_domain}", count)
    summary = "; ".join(f"{r.method}={r.result}" for r in parsed.results) or "none"
    return AuthVerdict(False, None, f"no aligned pass for {from_domain} from {trusted_authserv_id} ({summary})", count)
