"""Built-in handlers (``http``, ``email``, ``db_maintenance``): run only where the config's
``handlers:`` names one as ``builtin:KIND``; their settings are the config's ``builtins:``."""

from __future__ import annotations

# The config module first: it imports .settings part-way through (as it does the adapters'
# config models), so importing .settings before it would find the config half made.
import jobwire.config  # noqa: F401
from jobwire.builtins.settings import BUILTIN_PREFIX, KINDS, builtin_kind

__all__ = ["BUILTIN_PREFIX", "KINDS", "builtin_kind"]
