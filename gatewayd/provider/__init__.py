"""The fax provider: its API client (and, in .simulator, a simulator of it).

Only ``gatewayd.provider.client`` knows the provider's paths; the simulator
is imported from ``gatewayd.provider.simulator`` so the daemon does not load
it.
"""

from gatewayd.provider.client import (
    AmbiguousSubmit,
    AuthError,
    DocumentRefused,
    Extension,
    FaxFile,
    NotFound,
    ProviderClient,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    ReceivedFax,
    Rejected,
    SentFax,
    User,
)

__all__ = [
    "AmbiguousSubmit",
    "AuthError",
    "DocumentRefused",
    "Extension",
    "FaxFile",
    "NotFound",
    "ProviderClient",
    "ProviderError",
    "ProviderUnavailable",
    "RateLimited",
    "ReceivedFax",
    "Rejected",
    "SentFax",
    "User",
]
