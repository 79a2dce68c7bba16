"""What training tells its user: log lines without the progress bar, the checkpoint a resumed run
loaded, and what a changed schedule does on resume (or why it is refused)."""

import json
import re

import pytest
from runs import tiny_config

from csfr.engine.schedule import poly_factor, resume_note
from csfr.engine.trainer import Trainer


def test_no_progress_prints_the_log_lines(tmp_path, capsys):
    Trainer(tiny_config("train.log_interval=2"), tmp_path, progress=False).run()
    printed = re.findall(r"^iteration (\d+)/6: (.*), lr (\S+)$", capsys.readouterr().out, re.MULTILINE)
    logged = [r for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if r["event"] == "train"]
    assert [int(i) for i, _, _ in printed] == [r["iteration"] for r in logged] == [2, 4, 6]
    for (_, losses, lr), record in zip(printed, logged):
        values = dict(item.split(" ") for item in losses.split(", "))
        assert set(values) == {"ce", "aux_ce", "cac_intra", "cac_inter", "loss"}
        assert float(values["loss"]) == pytest.approx(record["loss"], abs=1e-4)
        assert float(lr) == pytest.approx(record["lr"], rel=1e-2)


@pytest.fixture(scope="module")
def three_iterations(tmp_path_factory):
    """A finished 3-iteration run; the tests only build resumed trainers on it, which write nothing."""
    work = tmp_path_factory.mktemp("run")
    Trainer(tiny_config("train.iters=3"), work, progress=False).run()
    return work


def test_resume_names_the_checkpoint_and_explains_a_longer_schedule(three_iterations, capsys):
    tmp_path = three_iterations
    capsys.readouterr()
    trainer = Trainer(tiny_config("train.iters=8"), tmp_path, resume="auto", progress=False)
    out = capsys.readouterr().out
    assert f"resumed from {tmp_path / 'checkpoints' / 'iter_000003.pt'} at iteration 3 of 8" in out
    assert "train.iters 3 -> 8 since the checkpoint" in out and "goes from 0 to " in out
    assert trainer.iteration == 3


def test_resume_refuses_what_it_cannot_honour(three_iterations):
    tmp_path = three_iterations
    with pytest.raises(ValueError, match="train.lr is 0.05 here but 0.02 in the checkpoint"):
        Trainer(tiny_config("train.iters=3", "train.lr=0.05"), tmp_path, resume="auto")
    with pytest.raises(ValueError, match="at iteration 3, past train.iters = 2"):
        Trainer(tiny_config("train.iters=2"), tmp_path, resume="auto")


def test_resume_note_gives_both_learning_rates():
    saved = {"iters": 100, "lr": 0.01, "min_lr": 0.0, "poly_power": 0.9, "warmup_iters": 0, "warmup_ratio": 0.1,
             "head_lr_mult": 10.0}
    assert resume_note(saved, dict(saved), 40) is None
    note = resume_note(saved, {**saved, "iters": 200}, 40)
    old, new = 0.01 * poly_factor(40, 100, 0.9), 0.01 * poly_factor(40, 200, 0.9)
    assert f"goes from {old:.4g} to {new:.4g}" in note and "train.iters 100 -> 200" in note
