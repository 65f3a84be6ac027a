"""Value parsers of the configuration: durations, sizes, host:port, CIDRs, E.164 prefixes, regexes, addresses.

Each takes the TOML value and returns the parsed one, or raises ``_Bad``
with the reason; the loader adds the key path (gatewayd/config/section.py).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from typing import Any
from urllib.parse import urlsplit

from gatewayd.config.model import HostPort
from gatewayd.headerformat import HeaderFormatError, check_header_format


class _Bad(Exception):
    """A value problem; the loader adds the key path."""


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, None: 1,
}
# Deliberately simple: a sane addr-spec, no display names, no quoted locals.
_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$")
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$")
_PREFIX_RE = re.compile(r"^\+[1-9][0-9]{0,14}$")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def parse_duration(value: Any) -> float:
    """``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"250ms"`` or seconds as a number."""
    if isinstance(value, bool):
        raise _Bad(f'expected a duration such as "30s", got {_show(value)}')
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise _Bad(f"expected a duration of 0 seconds or more, got {value}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        # compound: "1h30m", "2m 30s"
        text = value.strip()
        if text and _DURATION_PART_RE.sub("", text) == "" and text[0].isdigit():
            return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(text))
    raise _Bad(f'expected a duration such as "30s", "5m" or "2h", got {_show(value)}')


def parse_size(value: Any) -> int:
    """``"25MB"`` (powers of 1000), ``"10MiB"`` (powers of 1024) or bytes."""
    if isinstance(value, bool):
        raise _Bad(f'expected a size such as "25MB", got {_show(value)}')
    if isinstance(value, int):
        if value < 0:
            raise _Bad(f"expected a positive size, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise _Bad(f'expected a size such as "25MB" or "10MiB", got {_show(value)}')


def parse_host_port(value: Any) -> HostPort:
    if not isinstance(value, str):
        raise _Bad(f'expected "host:port", got {_show(value)}')
    text = value.strip()
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", text) or re.match(r"^([^:\[\]]+):(\d+)$", text)
    if not m:
        raise _Bad(f'expected "host:port", got {_show(value)}')
    host, port = m.group(1), int(m.group(2))
    if not _is_host(host):
        raise _Bad(f'expected "host:port" with a host name or IP address, got {_show(value)}')
    if not 0 < port < 65536:
        raise _Bad(f"port must be 1-65535, got {port}")
    return HostPort(host, port)


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_DOMAIN_RE.match(host.rstrip(".")))


def is_email_address(value: str) -> bool:
    return bool(_EMAIL_RE.match(value)) and len(value) <= 254


def parse_email(value: Any) -> str:
    if not isinstance(value, str) or not is_email_address(value.strip()):
        raise _Bad(f"expected an email address such as user@example.com, got {_show(value)}")
    return value.strip()


def parse_mailbox_header(value: Any) -> str:
    """One address with an optional display name: ``Fax Gateway <fax@host>``."""
    from email.headerregistry import AddressHeader, HeaderRegistry

    if not isinstance(value, str):
        raise _Bad(f"expected an address, got {_show(value)}")
    if any(c in value for c in "\r\n\0"):
        raise _Bad("line breaks are not allowed")
    bad = _Bad(f'expected one address, "Name <user@host>" or "user@host", got {_show(value)}')
    try:
        header = HeaderRegistry()("From", value.strip())
    except Exception:
        raise bad from None
    if not isinstance(header, AddressHeader) or header.defects or len(header.addresses) != 1:
        raise bad
    addr = header.addresses[0].addr_spec
    if not is_email_address(addr) and not re.match(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+$", addr):
        raise bad
    return value.strip()


def parse_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise _Bad(f'expected a network such as "192.0.2.0/24", got {_show(value)}')
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise _Bad(f"not a network: {exc}") from None


def parse_prefix(value: Any) -> str:
    if not isinstance(value, str) or not _PREFIX_RE.match(value.strip()):
        raise _Bad(f'expected an E.164 prefix such as "+7", got {_show(value)}')
    return value.strip()


def parse_regex(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected a regular expression string, got {_show(value)}")
    try:
        re.compile(value)
    except re.error as exc:
        raise _Bad(f"invalid regular expression: {exc}") from None
    return value


def parse_domain(value: Any) -> str:
    if not isinstance(value, str) or not _DOMAIN_RE.match(value.strip()):
        raise _Bad(f"expected a domain name, got {_show(value)}")
    return value.strip().lower().rstrip(".")



def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"expected an integer, got {_show(v)}")
    if v < 1:
        raise _Bad(f"expected a positive integer, got {v}")
    return v


MAX_SMTP_PROCESSES = 64
MAX_AUTO_PROCESSES = 4  # what "auto" (the default) starts at most


def auto_processes() -> int:
    """``smtp.processes = "auto"`` (the default): one per core this process may run on, at most 4.

    The cores are the CPU affinity (systemd's ``CPUAffinity=``, a container's
    cpuset), not every core of the machine. Past 4, each process's ~50-150 MiB
    (docs/smtp.md, "Listener processes") buys less than it costs on a
    gateway; more can be set explicitly."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_AUTO_PROCESSES, cores))


def _process_count(v: Any) -> int:
    """An integer from 1 to 64, or "auto" (``auto_processes``)."""
    if v == "auto":
        return auto_processes()
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f'expected an integer or "auto", got {_show(v)}')
    if not 1 <= v <= MAX_SMTP_PROCESSES:
        raise _Bad(f'expected 1 to {MAX_SMTP_PROCESSES} or "auto", got {v}')
    return v


def _non_negative_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"expected an integer, got {_show(v)}")
    if v < 0:
        raise _Bad(f"expected 0 or more, got {v}")
    return v


def _extension_id(v: Any) -> int:
    """An extension id given explicitly: a positive integer."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _Bad(f"expected an extension id (a positive integer), got {_show(v)}")
    return v


def _optional_extension_id(v: Any) -> int | None:
    """[[senders]] / [[smtp.users]] extension: 0 (the default) means "not set"."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _Bad(f"expected an extension id (a positive integer, or 0 for the default), got {_show(v)}")
    return v or None


def _default_extension_id(v: Any) -> int:
    """provider.extension: 0 means "none", every sender names its own."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _Bad(f"expected an extension id (a positive integer, or 0 for none), got {_show(v)}")
    return v


def _hostname(v: Any) -> str:
    if not isinstance(v, str) or (v and not _DOMAIN_RE.match(v)):
        raise _Bad(f"expected a host name such as mail.example.com, got {_show(v)}")
    return v


def _port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 65536:
        raise _Bad(f"expected a port 1-65535, got {_show(v)}")
    return v


def _url(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"expected a URL, got {_show(v)}")
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Bad(f'expected an http(s) URL such as "https://host/path", got {_show(v)}')
    return v.rstrip("/")


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): traffic that never leaves the machine."""
    text = host.strip().strip("[]").lower()
    if text == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def _provider_url(v: Any) -> str:
    """An https URL, or plain http to a loopback host (the simulator, a local proxy)."""
    url = _url(v)
    parts = urlsplit(url)
    if parts.scheme != "https" and not is_loopback_host(parts.hostname or ""):
        raise _Bad(f"must be https (the client secret and faxes cross the network), got {_show(v)}; plain http only to a loopback host")
    return url


def _pattern(v: Any) -> str:
    if not isinstance(v, str) or not v.strip() or any(c.isspace() for c in v.strip()):
        raise _Bad(f'expected a pattern such as "*@example.com", got {_show(v)}')
    return v.strip().lower()


def _inbound_target(v: Any) -> str:
    """An ``inbound`` entry of an account: a destination number or an extension id, as text."""
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return str(v)
    if isinstance(v, str) and v.strip() and not any(c in v for c in "\r\n\0"):
        return v.strip()
    raise _Bad(f"expected a destination number or an extension id, got {_show(v)}")


_NODE_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def is_node_name(v: str) -> bool:
    return bool(_NODE_NAME_RE.fullmatch(v))


def parse_node_name(v: Any) -> str:
    """``storage.node_name``: it labels leases, jobs and metrics (docs/deployment.md, Several nodes)."""
    if not isinstance(v, str):
        raise _Bad(f"expected a string, got {_show(v)}")
    if v and not _NODE_NAME_RE.fullmatch(v):  # "": the host name (gatewayd/config/paths.py)
        raise _Bad(f"expected 1 to 64 of the characters A-Z a-z 0-9 . _ -, got {_show(v)}")
    return v


def _str_no_newline(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"expected a string, got {_show(v)}")
    if any(c in v for c in "\r\n\0"):
        raise _Bad("control characters are not allowed")
    return v


_MAX_COVER_LINE = 200
_MAX_COVER_NOTICE = 1500
_MAX_LOGO_BYTES = 2_000_000
_MAX_LOGO_PIXELS = 4_000_000


def contact_number(number: str) -> str:
    """A contact's number as the number policy reads a local part: blanks and brackets dropped ("+7 812 309-00-01")."""
    return re.sub(r"[\s()]", "", number)


def _cover_line(v: Any) -> str:
    v = _str_no_newline(v)
    if len(v) > _MAX_COVER_LINE:
        raise _Bad(f"at most {_MAX_COVER_LINE} characters")
    return v.strip()


def _cover_notice(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"expected a string, got {_show(v)}")
    if "\0" in v:
        raise _Bad("control characters are not allowed")
    if len(v) > _MAX_COVER_NOTICE:
        raise _Bad(f"at most {_MAX_COVER_NOTICE} characters")
    return v.strip()


def _header_format(v: Any) -> str:
    v = _str_no_newline(v)
    try:
        check_header_format(v)
    except HeaderFormatError as exc:
        raise _Bad(str(exc)) from None
    return v


def _logo_problem(path: str) -> str:
    """Why ``path`` cannot be the cover's logo, or ""."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_LOGO_BYTES + 1)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if len(data) > _MAX_LOGO_BYTES:
        return f"{path} is larger than {_MAX_LOGO_BYTES} bytes"
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return f"{path} is not a PNG file"
    try:
        from io import BytesIO

        from PIL import Image

        with Image.open(BytesIO(data)) as image:
            if image.width * image.height > _MAX_LOGO_PIXELS:
                return f"{path} has more than {_MAX_LOGO_PIXELS} pixels"
            image.load()
    except Exception as exc:
        return f"{path} is not a readable PNG: {exc}"
    return ""


def _number_key(v: str) -> str:
    if not re.fullmatch(r"\+?[0-9]{2,20}", v):
        raise _Bad(f"expected a number (digits), got {_show(v)}")
    return v.lstrip("+")
