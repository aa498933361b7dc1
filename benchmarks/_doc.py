"""Shared by the benchmarks: record a result table as one section of docs/performance.md."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def write_section(doc: Path, heading: str, section: str) -> None:
    """Replace (or append) the section of ``doc`` that starts with the line ``heading``
    (up to the next ``## `` heading); every other section is kept."""
    text = doc.read_text() if doc.exists() else "# Performance\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = [""] + lines[end:] if end < len(lines) else []
        new = "\n".join(lines[:start] + section.rstrip("\n").splitlines() + tail) + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(new)
