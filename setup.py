"""Compiles the pure hot path with mypyc when it can; otherwise a plain pure-Python install.

Everything else about the package is in pyproject.toml. The modules below are plain,
`mypy --strict` clean Python: mypyc turns them into C extensions that sit next to the
sources (which stay in the wheel). No compiler, mypy missing, or CDC_BRIDGE_COMPILE=0:
the same install, pure Python. At run time CDC_BRIDGE_PURE=1 ignores the compiled ones.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The per-event path (profiled with `python -m bench --profile`): the pure modules, and
# the pipeline and publishers that drive them (their I/O is asyncio and nats-py, called
# as Python objects). An interpreted class cannot subclass a compiled one: a subclass
# of a class listed here must be listed too (FastPublisher of AtomicPublisher).
HOT_MODULES = [
    "cdc_bridge/core/changes.py",
    "cdc_bridge/core/headers.py",
    "cdc_bridge/core/lsn.py",
    "cdc_bridge/core/subjects.py",
    "cdc_bridge/core/templates.py",
    "cdc_bridge/core/tracker.py",
    "cdc_bridge/core/wire_text.py",
    "cdc_bridge/bridge/pipeline.py",
    "cdc_bridge/routing/change_events.py",
    "cdc_bridge/routing/cloudevents.py",
    "cdc_bridge/routing/dead_letters.py",
    "cdc_bridge/routing/debezium.py",
    "cdc_bridge/routing/messages.py",
    "cdc_bridge/routing/router.py",
    "cdc_bridge/routing/row_values.py",
    "cdc_bridge/routing/rules.py",
    "cdc_bridge/source/decoding/pgoutput.py",
    "cdc_bridge/source/decoding/wal2json.py",
    "cdc_bridge/source/protocol.py",
    "cdc_bridge/sink/ack_book.py",
    "cdc_bridge/sink/acks.py",
    "cdc_bridge/sink/atomic_publisher.py",
    "cdc_bridge/sink/batches.py",
    "cdc_bridge/sink/fast_batches.py",
    "cdc_bridge/sink/fast_publisher.py",
    "cdc_bridge/sink/ordering.py",
    "cdc_bridge/sink/publisher.py",
    "cdc_bridge/sink/wire.py",
]


def _say(text: str) -> None:
    print(f"cdc-bridge setup.py: {text}", file=sys.stderr)


class _BuildOrFallBack(build_ext):
    """A failed C build (no compiler, no Python headers) leaves a pure install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # CCompilerError, PlatformError, ...: all mean "no C"
            _say(f"C build failed ({exc}); installing pure Python")
            for built in self.get_outputs():
                if os.path.exists(built):
                    os.remove(built)
            self.extensions = []
            return
        # Unchanged C is not recompiled: mark the outputs as new as the sources they are
        # built from (cdc_bridge/__init__.py ignores compiled modules older than those).
        in_place = [self.get_ext_filename(ext.name) for ext in self.extensions]
        for built in [*self.get_outputs(), *in_place]:
            if os.path.exists(built):
                os.utime(built)


def _compiled() -> list[object]:
    if os.environ.get("CDC_BRIDGE_COMPILE", "1") == "0":
        _say("CDC_BRIDGE_COMPILE=0: pure Python")
        return []
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if shutil.which(compiler.split()[0]) is None or not os.path.exists(headers):
        _say(f"no C compiler ({compiler}) or no {headers}: pure Python")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say("mypyc is not installed: pure Python")
        return []
    # Third-party stubs may be absent from pip's isolated build environment: treat them
    # as Any (none of them is compiled) and report errors only in the compiled modules.
    flags = ["--ignore-missing-imports", "--follow-imports=silent"]
    try:
        return list(mypycify(flags + HOT_MODULES, opt_level="3", group_name="cdc_bridge._hot"))
    except (Exception, SystemExit) as exc:  # mypyc rejected something: say so, stay pure
        _say(f"mypyc failed ({exc!r}); installing pure Python")
        return []


setup(ext_modules=_compiled(), cmdclass={"build_ext": _BuildOrFallBack})
