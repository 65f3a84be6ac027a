"""Fax to email: the poller that emails each received fax exactly once (docs/inbound.md)."""
