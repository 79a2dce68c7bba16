"""Training end to end on the CPU: exact resume, interruption, NaN loss, evaluation, CLIs."""

import functools
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from runs import TINY, tiny_config

from csfr.engine import checkpoint
from csfr.engine.trainer import NonFiniteLoss, StopRequested, Trainer


def weights(path):
    return checkpoint.load(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def train_losses(work_dir):
    with open(work_dir / "log.jsonl") as log:
        return {r["iteration"]: r["loss"] for r in map(json.loads, log) if r["event"] == "train"}


def test_interrupted_and_resumed_run_repeats_the_straight_run_bit_for_bit(tmp_path, monkeypatch):
    straight = Trainer(tiny_config(), tmp_path / "straight", progress=False).run()
    assert straight["iteration"] == 6 and straight["scores"]["mIoU"] is not None

    # Ctrl-C during iteration 2: the loop finishes it, saves a checkpoint and stops
    step, calls = Trainer._step, []

    def step_then_interrupt(self, *args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, *args)

    monkeypatch.setattr(Trainer, "_step", step_then_interrupt)
    with pytest.raises(StopRequested, match="stopped at iteration 2"):
        Trainer(tiny_config(), tmp_path / "resumed", progress=False).run()
    monkeypatch.setattr(Trainer, "_step", step)
    assert checkpoint.latest(tmp_path / "resumed" / "checkpoints").name == "iter_000002.pt"

    # resume with DataLoader workers this time: the batches do not depend on them
    resumed = Trainer(tiny_config("data.workers=2"), tmp_path / "resumed", resume="auto", progress=False).run()
    assert resumed["iteration"] == 6
    assert_same_weights(weights(tmp_path / "straight/checkpoints/iter_000006.pt"),
                        weights(tmp_path / "resumed/checkpoints/iter_000006.pt"))
    assert train_losses(tmp_path / "straight") == train_losses(tmp_path / "resumed")
    assert resumed["scores"] == straight["scores"]


def test_run_folder_contents(tmp_path):
    work = tmp_path / "run"
    Trainer(tiny_config("train.val_interval=3"), work, progress=False).run()
    saved = json.loads((work / "config.json").read_text())
    assert saved["train"]["iters"] == 6
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["best.pt", "iter_000003.pt", "iter_000006.pt"]
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["iteration"] == 6 and "per_class" in metrics and metrics["best"]["iteration"] in (3, 6)
    events = [json.loads(line)["event"] for line in (work / "log.jsonl").read_text().splitlines()]
    assert events.count("train") == 6 and events.count("val") == 2
    assert list((work / "tensorboard").iterdir())
    assert len(list((work / "predictions" / "pred").glob("*.png"))) == 2
    assert len(list((work / "predictions" / "overlay").glob("*.png"))) == 2
    assert len(list((work / "predictions" / "panel").glob("*.png"))) == 2


def test_gradient_accumulation_and_bf16_run(tmp_path):
    result = Trainer(tiny_config("train.accum_steps=2", "train.amp=bfloat16", "train.iters=2"), tmp_path,
                     progress=False).run()
    assert result["iteration"] == 2


def test_compiled_step_is_one_graph_and_gives_the_eager_losses(tmp_path, monkeypatch):
    """train.compile: the whole forward with its losses (the fused operators included) traces as one
    graph, fullgraph, so no host read hides in it; the compiled run's losses are the eager run's. The
    aot_eager backend stands in for inductor (same tracing, no code generation: seconds, not minutes)."""
    import csfr.engine.trainer as trainer_module

    compile_calls, real_compile = [], torch.compile

    def aot_eager(module, *, mode, fullgraph):
        compile_calls.append((mode, fullgraph))
        return real_compile(module, backend="aot_eager", fullgraph=fullgraph)
    monkeypatch.setattr(trainer_module.torch, "compile", aot_eager)
    base = ("train.iters=3", "train.backend=cpu")
    Trainer(tiny_config(*base), tmp_path / "eager", progress=False).run()
    Trainer(tiny_config(*base, "train.compile=default"), tmp_path / "compiled", progress=False).run()
    assert compile_calls == [("default", True)]
    eager, compiled = train_losses(tmp_path / "eager"), train_losses(tmp_path / "compiled")
    assert eager.keys() == compiled.keys() == {1, 2, 3}
    # the first loss is the same weights' forward; the second follows one update from the compiled
    # backward (training amplifies fp differences within a few steps, as between any two backends)
    assert compiled[1] == pytest.approx(eager[1], rel=1e-5)
    assert compiled[2] == pytest.approx(eager[2], rel=1e-3)


def test_nan_loss_stops_with_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config("train.ckpt_interval=1", "train.lr=1e30", "train.warmup_iters=0", "train.iters=50")
    with pytest.raises(NonFiniteLoss, match=r"loss is not finite at iteration (\d+).*Last good checkpoint: .*iter_"):
        Trainer(config, tmp_path, progress=False).run()
    last = checkpoint.load(checkpoint.latest(tmp_path / "checkpoints"))
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_bad_settings_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="batch_size 5 is not divisible"):
        Trainer(tiny_config("train.batch_size=5", "train.accum_steps=2"), tmp_path)
    with pytest.raises(ValueError, match="train.amp must be one of"):
        Trainer(tiny_config("train.amp=half"), tmp_path)
    with pytest.raises(FileNotFoundError, match="no iter_.*checkpoint"):
        Trainer(tiny_config(), tmp_path / "empty", resume="auto")


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                          check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("module, flags", [
    ("csfr.train", ["--config", "--set", "--data-root", "--work-dir", "--resume", "--pretrained", "--amp",
                    "--device", "--print-config", "--no-progress"]),
    ("csfr.evaluate", ["--checkpoint", "--config", "--set", "--split", "--mode", "--scales", "--flip", "--out",
                       "--format", "--json", "--workers"]),
    ("csfr.data.prepare", ["cityscapes", "coco_stuff10k", "pascal_context"]),
    ("csfr.models.summary", ["--num-classes", "--width"]),
])
def test_help_explains_every_flag(module, flags):
    text = cli(module, "--help").stdout
    for flag in flags:
        assert flag in text, flag


def test_cli_train_then_evaluate_with_predictions(tmp_path):
    sets = [arg for item in TINY for arg in ("--set", item)]
    work = tmp_path / "run"
    out = cli("csfr.train", "--work-dir", str(work), "--no-progress", *sets).stdout
    assert "mIoU" in out and "pair0" in out
    best = work / "checkpoints" / "best.pt"
    ev = cli("csfr.evaluate", "--checkpoint", str(best), "--mode", "slide", "--set", "eval.crop_size=[24,24]",
             "--set", "eval.stride=[16,16]", "--scales", "0.75", "1.0", "--flip", "--out", str(tmp_path / "out"),
             "--workers", "0").stdout
    assert "mIoU" in ev
    scores = json.loads((tmp_path / "out" / "eval_synthetic_val.json").read_text())
    assert scores["eval"]["flip"] and scores["eval"]["scales"] == [0.75, 1.0] and scores["pixels"] == 6 * 40 * 40
    assert len(list((tmp_path / "out" / "pred").glob("*.png"))) == 6


def test_cli_errors_are_one_clear_line(tmp_path):
    proc = cli("csfr.train", "--config", "citiscapes", check=False)
    assert proc.returncode == 2 and "valid presets: ade20k, cityscapes" in proc.stderr
    proc = cli("csfr.train", "--set", "train.itres=1", check=False)
    assert proc.returncode == 2 and "unknown key 'itres' in train" in proc.stderr
    proc = cli("csfr.train", "--config", "cityscapes", "--data-root", str(tmp_path / "nowhere"),
               "--set", "data.workers=0", check=False)
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("csfr.evaluate", "--checkpoint", str(tmp_path / "missing.pt"), check=False)
    assert proc.returncode == 2 and "missing.pt does not exist" in proc.stderr


def test_checkpoint_of_another_model_names_the_differing_keys(tmp_path):
    Trainer(tiny_config("train.iters=1", "train.ckpt_interval=1"), tmp_path, progress=False).run()
    proc = cli("csfr.evaluate", "--checkpoint", str(tmp_path / "checkpoints" / "iter_000001.pt"),
               "--set", "model.name=fcn_r50_d8", check=False)
    assert proc.returncode == 2
    assert "does not fit this model" in proc.stderr and "head.csflm" in proc.stderr


@pytest.mark.filterwarnings("error::UserWarning")
def test_float16_amp_with_grad_scaler(tmp_path):
    """Its first steps overflow and are skipped by the scaler: the schedule steps anyway, without torch's
    out-of-order warning reaching the user."""
    trainer = Trainer(tiny_config("train.amp=float16", "train.iters=2"), tmp_path, progress=False)
    assert trainer.scaler.is_enabled()
    assert trainer.run()["iteration"] == 2


def test_pretrained_backbone_from_the_config(tmp_path):
    from csfr.models.resnet import ResNet

    source = ResNet(50, width=8)
    torch.save({**source.state_dict(), "fc.weight": torch.zeros(1000, 256), "fc.bias": torch.zeros(1000)},
               tmp_path / "r50.pth")
    trainer = Trainer(tiny_config(f"model.pretrained={tmp_path / 'r50.pth'}", "model.options.deep_stem=false"),
                      tmp_path / "run", progress=False)
    assert torch.equal(trainer.model.backbone.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_resume_with_accumulation_and_the_grad_scaler_repeats_the_straight_run(tmp_path, monkeypatch):
    """accum_steps = 2 (the data position counts micro-batches) and fp16 with the grad scaler: a run
    resumed from its iteration-1 checkpoint ends bit for bit where the straight run ends, scaler included.
    The scaler starts low and doubles after every step, so no step is skipped and its state changes."""
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=256.0,
                                                                   growth_interval=1))
    config = tiny_config("train.accum_steps=2", "train.amp=float16", "train.iters=2", "train.ckpt_interval=1",
                         "eval.save_predictions=0", "data.val_options.length=1")
    Trainer(config, tmp_path / "straight", progress=False).run()
    resumed = Trainer(config, tmp_path / "resumed", resume=str(tmp_path / "straight/checkpoints/iter_000001.pt"),
                      progress=False)
    assert resumed.iteration == 1 and resumed.scaler.get_scale() == 512.0
    resumed.run()
    final = [checkpoint.load(tmp_path / run / "checkpoints/iter_000002.pt") for run in ("straight", "resumed")]
    assert final[0]["scaler"]["scale"] == 1024.0  # 256 doubled twice: no step was skipped
    assert final[0]["scaler"] == final[1]["scaler"]
    assert_same_weights(final[0]["model"], final[1]["model"])
    losses = train_losses(tmp_path / "straight")
    assert train_losses(tmp_path / "resumed") == {2: losses[2]}
