"""Email plumbing both flows share: composing messages and delivering the stored outbox (docs/reports.md, docs/inbound.md)."""
