"""PyYAML's safe loader, refusing a document beyond the limits (limits.py) while it is
still being composed into nodes, before any value is built from them."""

from __future__ import annotations

import yaml

from cdc_bridge.config.limits import MAX_DEPTH, MAX_VALUES, too_deep, too_many_values

MERGE_TAG = "tag:yaml.org,2002:merge"


class BoundedLoader(yaml.SafeLoader):
    """The YAML loader, stopping at the limits (limits.py) while the document is still
    being composed: the composer keeps every node and recurses once per level, so a
    huge or deep file would otherwise fill memory, or end in a RecursionError, before
    a single value is built and counted."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._composed = 0
        self._depth = 0
        self._flattened: set[int] = set()
        self._flattening: set[int] = set()

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        # A mapping's key is composed with no index; keys are not values (the builder
        # reads them as text), so only values count, as they do when built.
        if not (isinstance(parent, yaml.MappingNode) and index is None):
            self._composed += 1
            if self._composed > MAX_VALUES:
                raise too_many_values()
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise too_deep(event.start_mark.line + 1)
            # The stubs type `index` as int: keys are composed with None, values with
            # their key node.
            return super().compose_node(parent, index)  # type: ignore[arg-type]
        finally:
            self._depth -= 1

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """Resolves ``<<:`` merge keys, refusing first a mapping that would get more
        pairs than the limit: PyYAML without yaml/pyyaml#937 (pyyaml>=6.0 is allowed)
        copies the merged mappings' pairs at each reference, so ``<<: [*a, *a, ...]``
        nested a few levels would make billions of them before the builder counts one."""
        if id(node) in self._flattened or id(node) in self._flattening:
            return  # done already, or a mapping merging itself (super() drops that key)
        self._flattening.add(id(node))
        try:
            pairs = len(node.value)
            for key_node, value_node in node.value:
                if key_node.tag != MERGE_TAG:
                    continue
                merged = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for mapping in merged:
                    if isinstance(mapping, yaml.MappingNode):  # else super() reports it
                        self.flatten_mapping(mapping)
                        pairs += len(mapping.value)
                        if pairs > MAX_VALUES:
                            raise too_many_values()
            super().flatten_mapping(node)
        finally:
            self._flattening.discard(id(node))
        self._flattened.add(id(node))
