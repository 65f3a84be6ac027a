"""What the provider client returns: typed records of the provider's users, extensions and faxes (docs/provider.md)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gatewayd.filekinds import FaxFileKind

__all__ = ["FINAL_STATUSES", "Extension", "FaxFile", "FileKind", "IncomingFax", "SentFax", "User"]

#: Statuses after which the provider will not change a sent fax by itself.
FINAL_STATUSES: frozenset[str] = frozenset({"sent", "canceled", "error"})

FileKind = FaxFileKind  # one definition: gatewayd/filekinds.py


@dataclass(frozen=True)
class User:
    """The account the credentials belong to."""

    client_id: int
    extension_id: int | None
    timezone: str
    access: str


@dataclass(frozen=True)
class Extension:
    id: int
    name: str
    label: str | None
    type: str
    status: str
    extension_group_id: int | None
    client_id: int | None


@dataclass(frozen=True)
class SentFax:
    id: int
    dst_num: str
    status: str
    datetime: dt.datetime | None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class IncomingFax:
    """A received fax as the provider lists it (the gateway's own record of
    one is ``gatewayd.store.ReceivedFax``)."""

    uuid: str
    caller_id: str
    client_id: int | None
    datetime: dt.datetime | None
    destination: str
    extension_group_id: int | None
    extension_id: int
    file_size: int | None


@dataclass(frozen=True)
class FaxFile:
    data: bytes
    kind: FileKind
    content_type: str
