"""Setup for the fault-injection suite. Helpers live in rel_support.py; the
email-to-fax helpers (raw SMTP client, config writer) and the hostile corpus
are shared with tests/email_to_fax (pytest runs with --import-mode=importlib,
so those directories are put on sys.path here)."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent, _HERE.parent / "email_to_fax"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
