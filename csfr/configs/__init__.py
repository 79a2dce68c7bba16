"""Training presets as plain JSON data, and `--set key.path=value` overrides.

A preset names a `_base` preset and lists only what differs from it; `load(name)` returns the
merged dict. Its `notes` say where each value comes from. Every key of the merged preset can be
overridden; `model.options`, `data.options` and `data.val_options` are open (they are passed on
to `csfr.models.build` and `csfr.data.build_dataset`), so new keys may be added there.
`resolve` checks every other field's type and range against one schema (`csfr.configs.schema`).
"""

from __future__ import annotations

import copy
import json
import os
from importlib import resources
from typing import Any

from csfr.configs.schema import validate

OPEN_SECTIONS = ("model.options", "data.options", "data.val_options", "notes")


def names() -> list[str]:
    """The preset names `load` accepts (base is the shared parent, not a preset of its own)."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".json") and f.name != "base.json")


def _read(name: str) -> dict:
    path = resources.files(__name__) / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(names())}")
    return json.loads(path.read_text())


def merge(base: dict, update: dict) -> dict:
    """A copy of `base` with `update` merged in, dicts recursively, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load(name: str) -> dict:
    """The preset `name`, with its `_base` chain merged in."""
    preset = _read(name)
    parent = preset.pop("_base", None)
    return merge(load(parent), preset) if parent else preset


def load_file(path: str | os.PathLike) -> dict:
    """A config saved by a run (config.json in its folder), or a user's own JSON preset."""
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise TypeError(f"config file {path} holds a {type(config).__name__}, not an object of sections "
                         "(model, data, train, eval)")
    parent = config.pop("_base", None)
    return merge(load(parent), config) if parent else config


def _parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false/null, lists, quoted strings), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def override(config: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` in place; an unknown key raises, listing the valid ones there."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ValueError(f"override {assignment!r} is not of the form key.path=value")
    node, parts = config, key.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the top level"
        is_open = ".".join(parts[:depth]) in OPEN_SECTIONS
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {where} is a value, not a section")  # noqa: TRY004 (bad input)
        if part not in node and not is_open:
            raise ValueError(f"override {key!r}: unknown key {part!r} in {where}; "
                             f"valid keys: {', '.join(sorted(node))}")
        if depth == len(parts) - 1:
            node[part] = _parse_value(text)
        else:
            node = node.setdefault(part, {})


def read(name_or_path: str) -> dict:
    """A preset name or a JSON file path, merged with its `_base` chain (not yet validated)."""
    return load_file(name_or_path) if name_or_path.endswith(".json") else load(name_or_path)


def resolve(name_or_path: str, assignments: list[str] = ()) -> dict:
    """A preset name or a JSON file path, with the overrides applied in order, validated
    (`csfr.configs.schema.validate`: a wrong type or range raises ValueError naming the key)."""
    config = read(name_or_path)
    for assignment in assignments:
        override(config, assignment)
    validate(config)
    return config


def save(config: dict, path: str | os.PathLike) -> None:
    """Write the resolved config as JSON, atomically."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:  # a full disk or a kill must not leave a partial file behind
        if os.path.exists(tmp):
            os.unlink(tmp)
