"""Writing one section of a results file (benchmarks/*.md), shared by the benchmark and study scripts."""

from __future__ import annotations

import os
import re
from pathlib import Path


def write_section(path: str, title: str, section: str, heading: str = "# Operator benchmark results") -> None:
    """Replaces the section `## title` of the results file (or appends it), atomically; a new file
    starts with `heading`."""
    text = Path(path).read_text() if os.path.exists(path) else heading + "\n\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    text = text.rstrip("\n") + "\n"  # rewriting the last section must not grow the file
    tmp = path + ".tmp"
    with open(tmp, "w") as out:
        out.write(text)
    os.replace(tmp, path)
