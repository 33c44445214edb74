"""The markdown tables the benchmarks print (right-aligned columns, a header row)."""

from __future__ import annotations


def print_markdown_table(rows: list[tuple[str, ...]]) -> None:
    """Print ``rows`` (the first is the header) as a markdown table."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
