"""gatewayd: an email-to-fax and fax-to-email gateway daemon."""

__version__ = "0.1.0"
