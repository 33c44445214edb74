"""Salvaging a queue page whose body does not decode as a whole (sans-IO).

One bad item (nested deeper than the decoder allows, a syntax error, invalid UTF-8)
must not cost the page: its good items are stored and acknowledged, the bad one is
quarantined raw. This module finds the texts of the page's items and of its ``meta``
object without decoding them, so each can be decoded on its own. A body that is not
structurally a page (cut short, unbalanced) cannot be split: it stays a lost page.
"""

from __future__ import annotations

import json
import re

# A JSON string, one structural character, or a run of anything else (scalars and
# whitespace). Together they cover any well-formed text without a gap; a gap means an
# unterminated string.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\],:]|[^"{}\[\],:]+', re.DOTALL)
_ACK_KEY = re.compile(r'"ack_key"\s*:\s*"((?:[^"\\]|\\.)*)"')


class NotAPage(ValueError):
    """The text is not structurally a queue page (truncated or unbalanced)."""


def split_page(text: str) -> tuple[list[str], str | None]:
    """The texts of the items of ``{"items": [...], "meta": {...}}`` and of its meta.

    Raises NotAPage unless the text is one balanced object with an ``items`` array.
    """
    items: list[str] = []
    meta: str | None = None
    found_items = in_items = False
    depth = pos = 0
    key: str | None = None  # the key whose value is being read, at depth 1
    last_string: str | None = None  # the last string at depth 1: a key if ':' follows
    start = meta_start = -1
    for m in _TOKEN.finditer(text):
        if m.start() != pos:
            raise NotAPage("unterminated string")
        pos = m.end()
        tok = m.group()
        ch = tok[0]
        if in_items and depth == 2 and start < 0 and ch not in ",]" and not tok.isspace():
            start = m.start()  # an element of the items array begins
        if ch in "{[":
            if depth == 1 and key == "items" and ch == "[":
                in_items = found_items = True
            elif depth == 1 and key == "meta" and ch == "{":
                meta_start = m.start()
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise NotAPage("unbalanced")
            if depth == 1 and in_items:
                if start >= 0:
                    items.append(text[start : m.start()].strip())
                start, in_items = -1, False
            elif depth == 1 and meta_start >= 0:
                meta, meta_start = text[meta_start : m.end()], -1
        elif ch == ",":
            if depth == 1:
                key = None
            elif depth == 2 and in_items:
                if start >= 0:
                    items.append(text[start : m.start()].strip())
                start = -1
        elif ch == ":":
            if depth == 1:
                key = last_string
        elif ch == '"' and depth == 1:
            last_string = _unquote(tok)
    if pos != len(text) or depth != 0:
        raise NotAPage("cut short")
    if not found_items:
        raise NotAPage("no items array")
    return items, meta


def ack_key_in(item_text: str) -> str | None:
    """The item's ack key, when its text names exactly one (so the item can be
    acknowledged once quarantined); None when there is none or it is ambiguous."""
    keys = {m.group(1) for m in _ACK_KEY.finditer(item_text)}
    if len(keys) != 1:
        return None
    (raw,) = keys
    return _unquote(f'"{raw}"') or None


def storable(text: str) -> str:
    """``text`` as SQLite can store it: bytes that were not UTF-8 (kept as lone
    surrogates by ``surrogateescape``) and lone surrogates become backslash escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def _unquote(tok: str) -> str | None:
    try:
        value = json.loads(tok)
    except ValueError:
        return None
    return value if isinstance(value, str) else None
