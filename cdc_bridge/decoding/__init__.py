"""Output-plugin decoders: a plugin's message bytes -> ``cdc_bridge.changes`` events."""
