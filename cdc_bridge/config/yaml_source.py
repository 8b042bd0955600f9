"""The config file as a source: YAML with line numbers, and ``${VAR}`` expansion.

Both record what they find wrong in Problems, tied to the key path and its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from cdc_bridge.config.bounded_yaml import MERGE_TAG, BoundedLoader
from cdc_bridge.config.limits import MAX_DEPTH, MAX_VALUES, LimitExceeded, too_deep, too_many_values
from cdc_bridge.config.problems import KeyPath, Problems


def read_yaml(text: str, problems: Problems) -> object:
    loader = BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        return _ValueBuilder(loader, problems).build(node, ())
    except LimitExceeded as exc:
        # Stopped at once: nothing past the limit is built, and what was is dropped.
        problems.add((), exc.message, exc.line)
    except yaml.MarkedYAMLError as exc:
        # Only the problem and its position: the exception's own text quotes the
        # source line, which may be a DSN with a password.
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problems.add((), f"invalid YAML: {exc.problem or exc.context}", line)
    except yaml.YAMLError as exc:
        problems.add((), f"invalid YAML: {type(exc).__name__}")
    finally:
        loader.dispose()
    return None


class _ValueBuilder:
    """Plain values from the composed nodes, node by node, each key path's line recorded.

    An alias is built again at each reference, as the config sees it: each value built
    counts toward the limit (limits.py), and building stops at once when it is reached,
    so that an alias bomb costs no more than a file that size written out."""

    def __init__(self, loader: BoundedLoader, problems: Problems) -> None:
        self._loader = loader
        self._problems = problems
        self._built = 0
        self._active: set[int] = set()  # being built: met again, an alias inside itself

    def build(self, node: yaml.Node, path: KeyPath) -> object:
        self._built += 1
        if self._built > MAX_VALUES:
            raise too_many_values()
        # len(path) + 1 levels, counted as the composer counts them (the root is one).
        if len(path) >= MAX_DEPTH:
            raise too_deep(node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            return self._loader.construct_object(node)
        if id(node) in self._active:
            self._problems.add(path, "a YAML alias refers to itself")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return self._build_list(node, path)
            assert isinstance(node, yaml.MappingNode)
            return self._build_mapping(node, path)
        finally:
            self._active.discard(id(node))

    def _build_list(self, node: yaml.SequenceNode, path: KeyPath) -> list[object]:
        items: list[object] = []
        for index, child in enumerate(node.value):
            self._problems.lines[(*path, index)] = child.start_mark.line + 1
            items.append(self.build(child, (*path, index)))
        return items

    def _build_mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, object]:
        _check_duplicate_keys(node, path, self._problems)
        # Resolves `<<: *anchor` merge keys; merged pairs come first, so keys written
        # out in this mapping override them (last one wins below).
        self._loader.flatten_mapping(node)
        mapping: dict[str, object] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                self._problems.add(path, "keys must be plain text", line)
                continue
            # The key's source text, not its YAML type: `on:` stays "on", not True.
            key = str(key_node.value)
            self._problems.lines[(*path, key)] = key_node.start_mark.line + 1
            mapping[key] = self.build(value_node, (*path, key))
        return mapping


def _check_duplicate_keys(node: yaml.MappingNode, path: KeyPath, problems: Problems) -> None:
    first_lines: dict[str, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE_TAG:
            continue
        line = key_node.start_mark.line + 1
        first = first_lines.setdefault(str(key_node.value), line)
        if first != line:
            key_path = (*path, str(key_node.value))
            problems.add(key_path, f"duplicate key (first on line {first})", line)


# ---------------------------------------------------------------------------------------
# ${VAR} and ${VAR:-default}
# ---------------------------------------------------------------------------------------

_ENV_REFERENCE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")


def expand_env(
    value: object, path: KeyPath, env: Mapping[str, str], problems: Problems, failed: set[KeyPath]
) -> object:
    if isinstance(value, dict):
        return {k: expand_env(v, (*path, k), env, problems, failed) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, (*path, i), env, problems, failed) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(reference: re.Match[str]) -> str:
        name, default = reference.group(1), reference.group(2)
        if reference.group(0) == "$${":  # escaped: a literal "${"
            return "${"
        if name is None:
            problems.add(path, "malformed ${...}: expected ${NAME} or ${NAME:-default}")
            failed.add(path)
            return ""
        current = env.get(name)
        if current:
            return current
        if default is not None:  # like the shell's ":-": empty counts as unset
            return default
        if current == "":
            return ""
        problems.add(
            path,
            f"environment variable {name} is not set "
            f"(write ${{{name}:-default}} to give a default)",
        )
        failed.add(path)
        return ""

    return _ENV_REFERENCE.sub(substitute, value)
