"""The documentation is the project's own and its examples run.

Every ```python block of README.md and docs/*.md is executed (small inputs, on the CPU, in a
scratch folder). A block that needs data or a checkpoint on disk starts with the line
`# docs-test: skip: <why>`; SKIPPED lists those blocks by file and first code line, and the test
fails when the marked blocks and the list differ, so skipping cannot grow silently.
"""

import json
import re
from pathlib import Path

import pytest

from csfr import configs

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
MARKER = "# docs-test: skip:"
SKIPPED = {
    ("docs/data.md", "from csfr.data import build_dataset, names, train_pipeline, test_pipeline, collate"):
        "needs the Cityscapes data on disk",
    ("README.md", "import csfr"): "needs a trained checkpoint",
    ("docs/inference.md", "import csfr"): "needs a trained checkpoint",
    ("docs/inference.md", "import numpy as np, onnxruntime, torch                # no csfr needed"):
        "needs exported model files and an image",
}


def python_blocks() -> list[tuple[str, int, str]]:
    """(file relative to the repository, index of the block in the file, code) of every python block."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for index, match in enumerate(FENCE.finditer(path.read_text())):
            found.append((path.relative_to(ROOT).as_posix(), index, match.group(1)))
    return found


BLOCKS = python_blocks()
RUN = [block for block in BLOCKS if not block[2].startswith(MARKER)]


def test_the_skipped_blocks_are_exactly_the_listed_ones():
    marked = {(where, code.splitlines()[1]) for where, _, code in BLOCKS if code.startswith(MARKER)}
    assert marked == set(SKIPPED)
    assert any(where == "README.md" for where, _, _ in RUN) and len(RUN) >= 2


@pytest.mark.parametrize("where, index, code", RUN, ids=[f"{w}#{i}" for w, i, _ in RUN])
def test_python_block_runs(where, index, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{where} (python block {index})", "exec"), {"__name__": "docs_snippet"})  # noqa: S102


def test_nothing_points_outside_the_repository():
    outside = ("DESIGN" + ".md", "../" + "shared", "/work/" + "shared")
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml", ROOT / "setup.py",
             *(ROOT / "docs").glob("*.md"), *(ROOT / "csfr").rglob("*.py"), *(ROOT / "csfr").rglob("*.json"),
             *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "csrc").rglob("*.*"),
             *(ROOT / "kernels").glob("*.*")]
    hits = [f"{path.relative_to(ROOT)}: {word}" for path in files if path.is_file()
            for word in outside if word in path.read_text(errors="ignore")]
    assert not hits
    assert (ROOT / "docs" / "design.md").is_file()


@pytest.mark.parametrize("name", configs.names())
def test_preset_notes_attribute_no_value_to_the_paper_text(name):
    """The paper's text available (its abstract) fixes no training setting: a note crediting "paper:" with a
    value is wrong; each note names its source."""
    notes = configs.load(name)["notes"]
    for key, note in notes.items():
        assert not re.search(r"\bpaper:", note), (name, key, note)
    sources = ("DANet", "PyTorch-Encoding", "MMSegmentation", "our", "docs/", "benchmarks/", "synthetic")
    assert all(any(s in note for s in sources) for note in notes.values()), json.dumps(notes, indent=1)
