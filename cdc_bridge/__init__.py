"""cdc-bridge: relay committed outbox inserts from PostgreSQL's WAL to NATS JetStream."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES, SOURCE_SUFFIXES, FileFinder, SourceFileLoader
from importlib.machinery import ModuleSpec as _ModuleSpec
from types import ModuleType

__version__ = "0.1.0"

# setup.py compiles the pure hot path with mypyc: an extension module next to each of those
# sources, plus their shared runtime. Python prefers an extension over the .py beside it.
# Their .py sources are imported instead when CDC_BRIDGE_PURE=1, or when any compiled
# module is older than its source (edited since the build: its code would be stale).
# All or nothing: compiled modules call each other directly, not through sys.modules.
_STALE_AFTER = 2.0  # seconds: installing a wheel writes a module's files moments apart


def _stale(package_dir: str) -> bool:
    suffix = EXTENSION_SUFFIXES[0]  # what setup.py builds with
    for folder, folders, names in os.walk(package_dir):
        folders[:] = [folder for folder in folders if folder != "__pycache__"]
        for name in names:
            if name.endswith(suffix) and name[: -len(suffix)] + ".py" in names:
                built = os.stat(os.path.join(folder, name)).st_mtime
                source = os.stat(os.path.join(folder, name[: -len(suffix)] + ".py")).st_mtime
                if source > built + _STALE_AFTER:
                    return True
    return False


class _SourcesOnly:
    """Finds this package's modules as .py sources only (first on sys.meta_path)."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> _ModuleSpec | None:
        if not name.startswith(__name__ + ".") or not path:
            return None
        for folder in path:
            spec = FileFinder(folder, (SourceFileLoader, SOURCE_SUFFIXES)).find_spec(name)
            if spec is not None:
                return spec
        return None


if os.environ.get("CDC_BRIDGE_PURE") == "1" or _stale(os.path.dirname(__file__)):
    sys.meta_path.insert(0, _SourcesOnly())


def compiled() -> bool:
    """Whether the hot path runs compiled (mypyc) code: built, and not switched off."""
    from cdc_bridge.core import lsn

    return not str(lsn.__file__).endswith(".py")


def build() -> str:
    """The build in effect, as --version and the startup log line say it."""
    return "compiled (mypyc)" if compiled() else "pure Python"
