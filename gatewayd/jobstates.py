"""The fax job states, defined once: every state, the final ones, the active ones.

docs/architecture.md, "Job states", describes each state and the moves
between them. A leaf module (no gatewayd imports), so the store, the
metrics, the HTTP endpoints and the command line can all use it.
"""

from __future__ import annotations

__all__ = [
    "CONVERTING", "QUEUED", "SUBMITTING", "SUBMITTED", "SENDING", "SENT", "FAILED", "CANCELED", "ERROR", "REJECTED", "UNKNOWN",
    "JOB_STATES", "FINAL_STATES", "ACTIVE_STATES", "AT_PROVIDER",
]

CONVERTING = "converting"
QUEUED = "queued"
SUBMITTING = "submitting"
SUBMITTED = "submitted"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
CANCELED = "canceled"
ERROR = "error"
REJECTED = "rejected"
UNKNOWN = "unknown"

# Every state, in the order of the main line (``converting``: an office
# document waits for LibreOffice after the 250, docs/documents.md) then the side exits (the order
# the command line and the metrics list them in).
JOB_STATES: tuple[str, ...] = (CONVERTING, QUEUED, SUBMITTING, SUBMITTED, SENDING, SENT, FAILED, CANCELED, ERROR, REJECTED, UNKNOWN)
# A job in one of these states is over ("failed" only once its retries are
# exhausted, so it is final only when the caller sets finished_at).
FINAL_STATES: tuple[str, ...] = (SENT, CANCELED, ERROR, REJECTED, UNKNOWN)
# States of a job on its way: never finished.
ACTIVE_STATES: tuple[str, ...] = (CONVERTING, QUEUED, SUBMITTING, SUBMITTED, SENDING)
# States in which the provider may still change the job; the tracker follows these.
AT_PROVIDER: tuple[str, ...] = (SUBMITTED, SENDING, FAILED)
