"""Output-plugin decoders: a plugin's message bytes -> ``cdc_bridge.core.changes`` events."""


class DecodeError(Exception):
    """A plugin payload that is malformed, truncated or not understood."""
