"""The configuration file (docs/configuration.md): every name callers import, re-exported."""

from gatewayd.config.loader import *  # noqa: F403 - interim, replaced in the next commit
from gatewayd.config.loader import _Bad, _Loader, _Section, _show  # noqa: F401
