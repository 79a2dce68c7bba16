"""Atomic checkpoints, pruning, RNG round trip and the weight-mismatch report."""

import pytest
import torch
from torch import nn

from csfr.engine import checkpoint


def test_save_is_atomic_and_prune_keeps_the_newest(tmp_path):
    for it in (5, 10, 15, 20):
        checkpoint.save({"iteration": it}, tmp_path / f"iter_{it:06d}.pt")
    assert not list(tmp_path.glob(".*tmp"))
    checkpoint.prune(tmp_path, 2)
    assert [p.name for p in checkpoint.iteration_files(tmp_path)] == ["iter_000015.pt", "iter_000020.pt"]
    assert checkpoint.load(checkpoint.latest(tmp_path))["iteration"] == 20


def test_failed_save_leaves_the_old_file(tmp_path):
    path = tmp_path / "iter_000001.pt"
    checkpoint.save({"ok": 1}, path)
    with pytest.raises((AttributeError, TypeError, RuntimeError)):
        checkpoint.save({"bad": lambda: 0}, path)  # lambdas cannot be pickled
    assert checkpoint.load(path) == {"ok": 1}
    assert not list(tmp_path.glob(".*tmp"))


def test_unreadable_checkpoint_is_named(tmp_path):
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="x.pt cannot be read"):
        checkpoint.load(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        checkpoint.load(tmp_path / "missing.pt")


def test_rng_round_trip():
    state = checkpoint.rng_state()
    a = torch.rand(3)
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


def test_weight_report_names_missing_unexpected_and_shape():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1))
    weights = dict(model.state_dict())
    weights["1.weight"] = torch.zeros(5, 4, 1, 1)
    weights["extra.bias"] = torch.zeros(1)
    del weights["0.bias"]
    with pytest.raises(ValueError) as err:
        checkpoint.load_weights(model, weights, "other.pt")
    text = str(err.value)
    assert "other.pt" in text and "0.bias" in text and "extra.bias" in text and "(5, 4, 1, 1)" in text
