"""The errors the provider client raises: one base class and what each case means to the caller (docs/provider.md)."""

from __future__ import annotations

import datetime as dt
from typing import Any

__all__ = [
    "AmbiguousSubmit",
    "AuthError",
    "DocumentRefused",
    "NotFound",
    "ProviderError",
    "ProviderUnavailable",
    "RateLimited",
    "Rejected",
]


class ProviderError(Exception):
    """Base of every error this client raises.

    ``http_status`` is the HTTP status when the provider answered,
    ``message``/``status`` the provider's JSON ``message`` and ``status`` word.
    """

    def __init__(
        self,
        text: str,
        *,
        http_status: int | None = None,
        message: str | None = None,
        status: str | None = None,
    ) -> None:
        super().__init__(text)
        self.http_status = http_status
        self.message = message
        self.status = status


class AuthError(ProviderError):
    """Token refused, a second 401 after renewal, or 403 (no rights)."""


class NotFound(ProviderError):
    """404: the extension, fax or received fax does not exist (any more)."""


class RateLimited(ProviderError):
    """429, or a call made while a previous 429's block is still running."""

    def __init__(self, text: str, *, retry_after: float, **kw: Any) -> None:
        super().__init__(text, **kw)
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    """5xx, connection failures, timeouts: nothing definite, safe to retry later."""


class Rejected(ProviderError):
    """Any other 4xx: the provider refused the request as such."""


class AmbiguousSubmit(ProviderError):
    """A fax POST may have reached the provider and its answer was lost.

    Never send again blindly: list the extension's sent faxes from
    ``started_at`` on and match ``dst_num`` first.
    """

    def __init__(
        self, text: str, *, extension_id: int, dst_num: str, started_at: dt.datetime, **kw: Any
    ) -> None:
        super().__init__(text, **kw)
        self.extension_id = extension_id
        self.dst_num = dst_num
        self.started_at = started_at


class DocumentRefused(ProviderError):
    """The document was refused locally (size or type); nothing was sent."""

    def __init__(self, text: str, *, reason: str) -> None:
        super().__init__(text)
        self.reason = reason
