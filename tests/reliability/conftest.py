"""Setup for the fault-injection suite. Helpers live in
tests/support/reliability.py; the email-to-fax helpers (raw SMTP client,
config writer) and the hostile corpus are shared with tests/email_to_fax."""
