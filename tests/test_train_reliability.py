"""Nothing lost, nothing silently wrong (docs/reliability.md): the run-folder lock, a kill during
validation, a resume that applies what it records, the log and partial files after a kill."""

import errno
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from runs import TINY, tiny_config

from csfr import configs
from csfr.engine import checkpoint
from csfr.engine.run_lock import RunFolderBusy, RunLock
from csfr.engine.trainer import Trainer


def events(work_dir, kind):
    return [r["iteration"] for r in map(json.loads, (work_dir / "log.jsonl").read_text().splitlines())
            if r["event"] == kind]


def test_a_second_run_in_the_folder_stops_naming_the_first(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": owner.pid}))
        with pytest.raises(RunFolderBusy, match=f"run folder {tmp_path} is in use by process {owner.pid}"):
            Trainer(tiny_config(), tmp_path, progress=False).run()
        assert not (tmp_path / "config.json").exists()  # refused before writing anything
    finally:
        owner.kill()
        owner.wait()


def test_a_stale_lock_is_taken_over_and_the_lock_is_released(tmp_path, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "run.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": gone.pid}))
    Trainer(tiny_config("train.iters=2", "train.ckpt_interval=2"), tmp_path, progress=False).run()
    assert f"took over the lock of process {gone.pid}, which no longer runs" in capsys.readouterr().out
    assert not (tmp_path / "run.lock").exists()
    (tmp_path / "run.lock").write_text("{\"host\": ")  # cut short by a kill while it was written
    with RunLock(tmp_path) as lock:
        assert "no longer runs" in lock.note


def test_two_cli_trainings_in_one_folder_one_refuses_in_one_line(tmp_path):
    args = [sys.executable, "-m", "csfr.train", "--work-dir", str(tmp_path), "--no-progress",
            *[a for s in [*TINY, "train.iters=100000", "train.ckpt_interval=100000"] for a in ("--set", s)]]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not (tmp_path / "run.lock").exists() and first.poll() is None:
            time.sleep(0.1)
        second = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    finally:
        first.terminate()  # SIGTERM: it saves a checkpoint and stops
        first.communicate(timeout=300)
    assert second.returncode == 2
    assert second.stderr.strip().count("\n") == 0 and f"is in use by process {first.pid}" in second.stderr
    assert not (tmp_path / "run.lock").exists()  # released by the first on its way out


class KilledWhileValidating(Exception):
    pass


def test_a_kill_during_validation_is_validated_again_on_resume(tmp_path, monkeypatch):
    """Killed while validating iteration 4 (checkpoints every 2): the resumed run validates 4 again,
    best.pt is the best of all validations, and log.jsonl holds every iteration once."""
    config = tiny_config("train.ckpt_interval=2", "train.val_interval=2", "eval.save_predictions=0")
    straight = Trainer(config, tmp_path / "straight", progress=False).run()
    validate = Trainer.validate

    def killed_at_4(self, *args, **kwargs):
        if self.iteration == 4:
            raise KilledWhileValidating
        return validate(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "validate", killed_at_4)
    with pytest.raises(KilledWhileValidating):
        Trainer(config, tmp_path / "run", progress=False).run()
    monkeypatch.setattr(Trainer, "validate", validate)
    (tmp_path / "run" / "config.json.tmp").write_text("")  # partial files of a kill
    (tmp_path / "run" / "checkpoints" / "iter_000004.pt.tmp").write_text("")
    resumed = Trainer(config, tmp_path / "run", resume="auto", progress=False).run()
    assert events(tmp_path / "run", "val") == [2, 4, 6]
    assert events(tmp_path / "run", "train") == list(range(1, 7))
    assert resumed["best"] == straight["best"]
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_resume_applies_changed_optimiser_settings(tmp_path, capsys):
    Trainer(tiny_config("train.iters=3"), tmp_path, progress=False).run()
    trainer = Trainer(tiny_config("train.iters=3", "train.momentum=0.5", "train.weight_decay=0.001"), tmp_path,
                      resume="auto", progress=False)
    assert {g["momentum"] for g in trainer.optimizer.param_groups} == {0.5}
    assert {g["weight_decay"] for g in trainer.optimizer.param_groups} == {0.001}
    out = capsys.readouterr().out
    assert "train.momentum 0.9 -> 0.5 since the checkpoint, applied" in out and "train.weight_decay 0.0001 -> 0.001" in out


def test_resume_from_a_weights_file_is_refused_in_one_line(tmp_path):
    Trainer(tiny_config("train.iters=2", "train.ckpt_interval=2"), tmp_path, progress=False).run()
    with pytest.raises(ValueError, match=r"best.pt holds no training state \(optimizer, scheduler, scaler, rng "
                                         r"missing\): it is a weights file"):
        Trainer(tiny_config("train.iters=2"), tmp_path, resume=str(tmp_path / "checkpoints" / "best.pt"))


def test_a_full_disk_names_the_file_and_the_free_space_and_leaves_no_partial_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(OSError, match=r"cannot write checkpoint .*iter_000003.pt \(0 MiB free on its disk\)"):
        checkpoint.save({"x": 1}, tmp_path / "iter_000003.pt")
    assert not list(tmp_path.iterdir())

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(configs.json, "dump", no_space)
    with pytest.raises(OSError, match="No space left on device"):
        configs.save({"a": 1}, tmp_path / "config.json")
    assert not list(tmp_path.iterdir())  # no 0-byte config.json.tmp


@pytest.mark.parametrize("flags, message", [
    (["--set", "model.options.widht=8"], "unknown model option(s) widht"),
    (["--set", "data.options.colour=1"], "unexpected keyword argument 'colour'"),
    (["--device", "cuda"], "train.device=cuda but torch sees no CUDA device"),
])
def test_user_errors_of_the_cli_are_one_line_and_the_traceback_is_kept_on_request(tmp_path, flags, message):
    if torch.cuda.is_available() and "cuda" in flags:
        pytest.skip("CUDA is present")
    args = [sys.executable, "-m", "csfr.train", "--work-dir", str(tmp_path), *flags]
    plain = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert plain.returncode == 2 and plain.stderr.strip().count("\n") == 0 and message in plain.stderr, plain.stderr
    debug = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False,
                           env={**os.environ, "CSFR_TRACEBACK": "1"})
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_a_work_dir_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    train = subprocess.run([sys.executable, "-m", "csfr.train", "--work-dir", str(tmp_path / "file" / "run"),
                            *[a for s in [*TINY, "train.iters=1"] for a in ("--set", s)]],
                           capture_output=True, text=True, timeout=300, check=False)
    assert train.returncode == 2 and train.stderr.strip().count("\n") == 0 and "Not a directory" in train.stderr


def test_validation_and_training_classes_must_agree(tmp_path):
    with pytest.raises(ValueError, match=r"the validation set has 6 classes .* but the training set 4"):
        Trainer(tiny_config("data.val_options.num_classes=6"), tmp_path)


def test_evaluate_refuses_a_checkpoint_of_other_classes(tmp_path):
    from runs import checkpoint_of

    from csfr import evaluate
    checkpoint_of(tmp_path / "best.pt")
    with pytest.raises(ValueError, match="was trained with 4 classes, but synthetic val has 6"):
        evaluate.main(["--checkpoint", str(tmp_path / "best.pt"), "--set", "data.options.num_classes=6",
                       "--set", "data.val_options.length=1"])


def test_check_lists_every_unreadable_file(tmp_path):
    from test_data_bad_input import ade, build
    root, images, labels = ade(tmp_path, n=4)
    images[1].write_bytes(b"not a jpeg")
    Image.fromarray(np.full((8, 9), 200, np.uint8)).save(labels[3])  # 200 is no ADE20K class
    problems = build(root).check(progress=False)
    assert len(problems) == 2
    assert str(images[1]) in problems[0] and "unreadable or truncated" in problems[0]
    assert str(labels[3]) in problems[1]


def test_a_bad_file_met_in_training_is_one_line_with_workers(tmp_path, monkeypatch):
    from csfr.data import SyntheticScenes
    load = SyntheticScenes.load

    def broken(self, index):
        if self.split == "train" and index == 5:
            raise ValueError("cannot read image file /data/x.png (unreadable or truncated): broken data stream")
        return load(self, index)

    monkeypatch.setattr(SyntheticScenes, "load", broken)
    with pytest.raises(ValueError) as error:
        Trainer(tiny_config("data.workers=2", "data.options.length=8"), tmp_path, progress=False).run()
    message = str(error.value)
    assert "\n" not in message and message.startswith("cannot read image file /data/x.png")
    assert "--check-data lists every bad file" in message


def test_check_data_flag_reads_everything_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "csfr.train", "--work-dir", str(tmp_path), "--no-progress",
                           "--check-data", *[a for s in [*TINY, "train.iters=1", "train.ckpt_interval=1"]
                                             for a in ("--set", s)]],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "checked 64 training and 6 validation items: all readable" in proc.stdout


@pytest.mark.parametrize("text, message", [("[1, 2]", "holds a list, not an object of sections"),
                                           ("{\"model\": ", "is not valid JSON")])
def test_a_config_file_that_is_no_config_is_one_line(tmp_path, text, message):
    (tmp_path / "mine.json").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "csfr.train", "--config", str(tmp_path / "mine.json"),
                           "--print-config"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and message in proc.stderr, proc.stderr
