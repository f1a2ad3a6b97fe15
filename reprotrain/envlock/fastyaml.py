"""A fast reader for the block-style YAML that conda-lock writes, with PyYAML as the fallback.

PyYAML (even its C loader) spends most of `env verify` on a large lock: a 1,400-package conda-lock.yml
takes most of a second to load. conda-lock writes one regular layout: block mappings and sequences
indented by two spaces, one `key: value` per line, plain or quoted scalars, and only the empty flow
collections `{}` and `[]`. `parse()` reads exactly that layout and returns None for anything else
(anchors, tags, block scalars, non-empty flow collections, tabs, a multi-line scalar, a plain scalar
PyYAML would resolve to a float or timestamp ...), so the caller falls back to PyYAML: the result is
always what `yaml.safe_load` returns. Plain scalars are typed by PyYAML's resolver patterns (copied below, so
the fast path imports no PyYAML).
"""

from __future__ import annotations

import re

_KEY = re.compile(r"^(?P<indent> *)(?P<dash>- )?(?P<key>[A-Za-z0-9_][A-Za-z0-9_.+/@-]*|'[^']*'|\"[^\"\\\\]*\"):"
                  r"(?: (?P<value>.*))?$")
_ITEM = re.compile(r"^(?P<indent> *)- (?P<value>.*)$")
_UNSAFE_PLAIN_START = set("&*!|>%@`{[,#?'\"")


# PyYAML's implicit resolvers for plain scalars (YAML 1.1, yaml/resolver.py), so that the fast path needs no
# PyYAML import; tests compare every result with yaml.safe_load.
_IMPLICIT = (
    ("bool", re.compile(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$")),
    ("float", re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
                         r"|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")),
    ("int", re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+"
                       r"|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$")),
    ("merge", re.compile(r"^(?:<<)$")),
    ("null", re.compile(r"^(?:~|null|Null|NULL|)$")),
    ("timestamp", re.compile(r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?"
                             r"(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?"
                             r"(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$")),
    ("value", re.compile(r"^(?:=)$")),
)


def _resolve(text: str) -> str:
    for tag, pattern in _IMPLICIT:
        if pattern.match(text):
            return tag
    return "str"


class _Fallback(Exception):
    pass


_resolved: dict[str, object] = {}


def _plain(text: str):
    cached = _resolved.get(text, _resolved)
    if cached is not _resolved:
        return cached
    if not text or text[0] in _UNSAFE_PLAIN_START or " #" in text or text.endswith(":") or ": " in text \
            or text != text.strip() or text.startswith("- "):
        raise _Fallback
    tag = _resolve(text)
    if tag == "str":
        value: object = text
    elif tag == "null":
        value = None
    elif tag == "bool":
        value = text.lower() in ("yes", "true", "on")
    elif tag == "int" and re.fullmatch(r"[-+]?(0|[1-9][0-9]*)", text):
        value = int(text)
    else:
        raise _Fallback  # floats, timestamps, octal/hex/sexagesimal ints: PyYAML decides
    _resolved[text] = value
    return value


def _scalar(text: str):
    if text == "{}":
        return {}
    if text == "[]":
        return []
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'") or "'" in text[1:-1].replace("''", ""):
            raise _Fallback
        return text[1:-1].replace("''", "'")
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"') or "\\" in text or '"' in text[1:-1]:
            raise _Fallback
        return text[1:-1]
    return _plain(text)


def _key(text: str) -> str:
    if text[0] in "'\"":
        return text[1:-1]
    value = _plain(text)
    if not isinstance(value, str):
        raise _Fallback  # a key PyYAML would type (true:, 1:): not in conda-lock's layout
    return value


def parse(text: str):
    """The document TEXT as `yaml.safe_load` would return it, or None when TEXT is outside the layout."""
    try:
        return _parse(text)
    except _Fallback:
        return None


def _parse(text: str):
    lines = []
    for raw in text.split("\n"):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if "\t" in raw or raw.endswith("\r") or raw.startswith("---") or raw.startswith("..."):
            raise _Fallback
        lines.append(raw)
    if not lines:
        raise _Fallback
    root: dict = {}
    # stack of (indent of the keys of this mapping, the mapping); a sequence is entered through its key
    stack: list[tuple[int, object]] = [(0, root)]
    pending_key: tuple[int, dict, str] | None = None  # a `key:` with its value on the following lines
    for line in lines:
        match = _KEY.match(line)
        if match is not None:
            indent = len(match["indent"])
            dash = match["dash"] is not None
            key, value = _key(match["key"]), match["value"]
        else:
            item = _ITEM.match(line)
            if item is None:
                raise _Fallback
            indent, dash, key, value = len(item["indent"]), True, None, item["value"]
        if pending_key is not None:
            owner_indent, owner, owner_key = pending_key
            pending_key = None
            if dash and indent >= owner_indent:
                sequence: list = []
                owner[owner_key] = sequence
                stack.append((indent, sequence))
            elif not dash and indent > owner_indent:
                mapping: dict = {}
                owner[owner_key] = mapping
                stack.append((indent, mapping))
            else:
                owner[owner_key] = None
        if dash:
            # pop to the sequence at this indent
            while stack and not (isinstance(stack[-1][1], list) and stack[-1][0] == indent):
                if stack[-1][0] < indent:
                    raise _Fallback
                stack.pop()
            if not stack:
                raise _Fallback
            sequence = stack[-1][1]
            if key is None:
                sequence.append(_scalar(value))
                continue
            mapping = {}
            sequence.append(mapping)
            stack.append((indent + 2, mapping))
        else:
            while stack and not (isinstance(stack[-1][1], dict) and stack[-1][0] == indent):
                if stack[-1][0] < indent:
                    raise _Fallback
                stack.pop()
            if not stack:
                raise _Fallback
        mapping = stack[-1][1]
        if not isinstance(mapping, dict) or key in mapping:
            raise _Fallback
        if value is None or value == "":
            pending_key = (indent if not dash else indent + 2, mapping, key)
            if dash:
                pending_key = (indent + 2, mapping, key)
        else:
            mapping[key] = _scalar(value)
    if pending_key is not None:
        pending_key[1][pending_key[2]] = None
    return root
