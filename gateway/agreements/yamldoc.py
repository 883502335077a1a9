"""YAML documents that remember where each value was written.

A problem in an agreement is only useful if it says where to look, so files
are composed into a node tree first (which keeps line numbers) and the line of
every mapping entry and sequence item is recorded under its path, the same
tuple shape pydantic uses for error locations: ``("datasets", 1, "name")``.

Files are read with libyaml's parser (``CSafeLoader``) when PyYAML has it: every
command reads every agreement and policy, and the pure-Python parser took four times
as long (issue 14). Its nodes carry the same lines and go through the same safe
constructor. A file libyaml refuses is read again with the pure-Python parser, whose
messages (the problem, its column, where an unclosed construct began) the errors
quote, so a broken file is reported exactly as before.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

#: A place in a document: mapping keys and sequence indexes from the root.
Loc = tuple[Any, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class YamlSyntaxError(Exception):
    """The text is not one well-formed YAML document; ``line`` is 1-based."""

    def __init__(self, reason: str, line: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


@dataclass(frozen=True)
class YamlDocument:
    """Parsed data plus the 1-based line of every node, keyed by path."""

    data: Any
    lines: dict[Loc, int]
    #: (path, line) of each key written twice in one mapping; YAML keeps the last silently.
    duplicate_keys: list[tuple[Loc, int]] = field(default_factory=list)

    def line_of(self, loc: Loc) -> int | None:
        """Line of ``loc``, or of its nearest ancestor written in the file (e.g. for a
        missing key, the mapping that should hold it)."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return None

    def locate(self, loc: Loc) -> Loc:
        """The file path behind a validation-error location.

        pydantic inserts labels that are not places in the file (union members,
        validator names such as ``function-after[...]``); they are dropped. A
        last element naming a key absent from a mapping is kept: it is the
        missing key.
        """
        out: list[Any] = []
        node = self.data
        for index, part in enumerate(loc):
            if (isinstance(node, dict) and _hashable(part) and part in node) or (
                isinstance(node, list)
                and isinstance(part, int)
                and not isinstance(part, bool)
                and 0 <= part < len(node)
            ):
                out.append(part)
                node = node[part]
            elif index == len(loc) - 1 and isinstance(node, dict):
                out.append(part)
        return tuple(out)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def format_path(loc: Loc) -> str:
    """Render a path as ``datasets[1].stored_fields[3]``; keys that are not plain
    names are quoted: ``header_map["Eval Yr"]``. The root is ``""``."""
    text = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part if isinstance(part, str) else str(part))}]"
    return text


#: libyaml's parser with the safe constructor, when PyYAML was built with libyaml.
_FAST_LOADER: type[yaml.CSafeLoader] | None = getattr(yaml, "CSafeLoader", None)


def parse_yaml(text: str) -> YamlDocument:
    """Parse one YAML document (safe tags only) and record the line of each node.

    Raises :class:`YamlSyntaxError` for malformed YAML, several documents, or
    an empty file.
    """
    if _FAST_LOADER is not None:
        try:
            return _parse(_FAST_LOADER(text))
        except (YamlSyntaxError, yaml.YAMLError):
            pass  # the pure-Python parser below says what is wrong, and where
    return _parse(yaml.SafeLoader(text))


def _parse(loader: yaml.SafeLoader | yaml.CSafeLoader) -> YamlDocument:
    try:
        node = loader.get_single_node()
        if node is None:
            raise YamlSyntaxError("the file is empty", None)
        lines: dict[Loc, int] = {}
        duplicates: list[tuple[Loc, int]] = []
        # Walk before constructing: construction flattens merge keys ("<<")
        # into the node, which would make overridden merged keys look duplicated.
        _record(loader, node, (), lines, duplicates, set())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (column {mark.column + 1})" if mark is not None else ""
        parts = [p for p in (exc.context, exc.problem) if p]
        reason = "YAML syntax error: " + (", ".join(parts) or "malformed document") + where
        context = exc.context_mark
        if context is not None and mark is not None and context.line != mark.line:
            # PyYAML notices an unclosed bracket where the next thing starts: point at both.
            reason += f"; the construct began on line {context.line + 1}"
        raise YamlSyntaxError(reason, mark.line + 1 if mark is not None else None) from exc
    except yaml.YAMLError as exc:  # unmarked errors (e.g. bad characters in the stream)
        raise YamlSyntaxError(f"YAML syntax error: {exc}", None) from exc
    finally:
        loader.dispose()
    return YamlDocument(data=data, lines=lines, duplicate_keys=duplicates)


def _record(
    loader: yaml.SafeLoader | yaml.CSafeLoader,
    node: yaml.Node,
    loc: Loc,
    lines: dict[Loc, int],
    duplicates: list[tuple[Loc, int]],
    active: set[int],
) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if id(node) in active:  # an alias pointing at its own ancestor: stop, do not loop
        return
    active = active | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # merged entries have no line of their own here
            key = loader.construct_object(key_node, deep=True)
            if not _hashable(key):
                continue  # construction reports unhashable keys with their line
            line = key_node.start_mark.line + 1
            if key in seen:
                duplicates.append(((*loc, key), line))
                continue
            seen.add(key)
            # A mapping entry is reported at its key: "disclosure:" rather than
            # the first line of the nested block below it.
            lines[(*loc, key)] = line
            _record(loader, value_node, (*loc, key), lines, duplicates, active)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record(loader, item, (*loc, index), lines, duplicates, active)
