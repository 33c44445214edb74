"""Census's ``field_normalization``: how automatically mapped names are written.

One pure function for both directions (push: source columns → destination fields;
pull: remote fields → columns). A name is split into words at every run of
characters that are not letters or digits, at a lower→upper case change
(``firstName``) and before the last capital of a run of capitals followed by a
lower-case letter (``HTTPStatus`` → ``HTTP``, ``Status``); digits stay with the
word they follow (``address2``). Letters are Unicode letters: non-ASCII names keep
their letters (``Größe`` → ``größe``).
"""

from __future__ import annotations

from collections.abc import Callable

STYLES = (
    "match_source_names",
    "snake_case",
    "camel_case",
    "lower_case",
    "upper_case",
    "start_case",
)


def words(name: str) -> list[str]:
    """The words of a name (see the module's docstring)."""
    out: list[str] = []
    current = ""
    for i, ch in enumerate(name):
        if not (ch.isalpha() or ch.isdigit()):
            if current:
                out.append(current)
            current = ""
            continue
        if current and ch.isupper():
            prev = current[-1]
            nxt = name[i + 1] if i + 1 < len(name) else ""
            # firstName | HTTPStatus: a capital after a lower-case letter or digit, or
            # the capital that starts a word after a run of capitals.
            if prev.islower() or prev.isdigit() or (prev.isupper() and nxt.islower()):
                out.append(current)
                current = ""
        current += ch
    if current:
        out.append(current)
    return out


def _camel(ws: list[str]) -> str:
    return "".join(w.lower() if i == 0 else w[:1].upper() + w[1:].lower() for i, w in enumerate(ws))


def _start(ws: list[str]) -> str:
    # As Census (and lodash's startCase) write it: capitals already there are kept.
    return " ".join(w[:1].upper() + w[1:] for w in ws)


_STYLE: dict[str, Callable[[list[str]], str]] = {
    "snake_case": lambda ws: "_".join(w.lower() for w in ws),
    "camel_case": _camel,
    "lower_case": lambda ws: " ".join(w.lower() for w in ws),
    "upper_case": lambda ws: " ".join(w.upper() for w in ws),
    "start_case": _start,
}


def normalize(name: str, style: str) -> str:
    """``name`` written in ``style`` (one of ``STYLES``); a name without letters or
    digits is kept as it is rather than becoming empty."""
    if style == "match_source_names":
        return name
    ws = words(name)
    if not ws:
        return name
    return _STYLE[style](ws)
