"""Email to fax: SMTP and IMAP intake, the sender and tracker, and the status reports (docs/smtp.md, docs/imap.md, docs/reports.md)."""
