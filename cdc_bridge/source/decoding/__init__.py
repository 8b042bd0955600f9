"""Output-plugin decoders: a plugin's message bytes -> ``cdc_bridge.core.changes`` events."""

from __future__ import annotations

from typing import Protocol

from cdc_bridge.core.changes import Change


class DecodeError(Exception):
    """A plugin payload that is malformed, truncated or not understood."""


class Decoder(Protocol):
    """What the pipeline needs of a decoder: one plugin message in, one change (or
    None for what it skips) out."""

    def decode(self, payload: bytes) -> Change | None: ...
