"""The config file as a source: YAML with line numbers, and ``${VAR}`` expansion.

Both record what they find wrong in Problems, tied to the key path and its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from cdc_bridge.config.problems import KeyPath, Problems


def read_yaml(text: str, problems: Problems) -> object:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        return _build_value(loader, node, (), problems, set())
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


def _build_value(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: KeyPath,
    problems: Problems,
    active: set[int],
) -> object:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_object(node)
    if id(node) in active:
        problems.add(path, "a YAML alias refers to itself")
        return None
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            items: list[object] = []
            for index, child in enumerate(node.value):
                problems.lines[(*path, index)] = child.start_mark.line + 1
                items.append(_build_value(loader, child, (*path, index), problems, active))
            return items
        assert isinstance(node, yaml.MappingNode)
        _check_duplicate_keys(node, path, problems)
        # Resolves `<<: *anchor` merge keys; merged pairs come first, so keys written
        # out in this mapping override them (last one wins below).
        loader.flatten_mapping(node)
        mapping: dict[str, object] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.add(path, "keys must be plain text", key_node.start_mark.line + 1)
                continue
            # The key's source text, not its YAML type: `on:` stays "on", not True.
            key = str(key_node.value)
            problems.lines[(*path, key)] = key_node.start_mark.line + 1
            mapping[key] = _build_value(loader, value_node, (*path, key), problems, active)
        return mapping
    finally:
        active.discard(id(node))


def _check_duplicate_keys(node: yaml.MappingNode, path: KeyPath, problems: Problems) -> None:
    first_lines: dict[str, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        line = key_node.start_mark.line + 1
        first = first_lines.setdefault(str(key_node.value), line)
        if first != line:
            key_path = (*path, str(key_node.value))
            problems.add(key_path, f"duplicate key (first on line {first})", line)


_MERGE_TAG = "tag:yaml.org,2002:merge"


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
