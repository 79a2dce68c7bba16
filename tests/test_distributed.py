"""Two CPU processes (gloo, torchrun's environment variables): identical weights on both ranks, and the
distributed mIoU equals the single-process one on the same checkpoint."""

import os
import socket

import torch
import torch.multiprocessing as mp
from runs import tiny_config

from csfr.engine import checkpoint, distributed
from csfr.engine.builders import build_datasets, build_model
from csfr.engine.evaluator import evaluate
from csfr.engine.trainer import Trainer
from csfr.models import layers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, work_dir: str, config: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        trainer = Trainer(config, work_dir, progress=False)
        result = trainer.run()
        torch.save({"weights": trainer.model.state_dict(), "scores": result["scores"]},
                   os.path.join(work_dir, f"rank{rank}.pt"))
    finally:
        distributed.shutdown()


def test_two_process_training_and_evaluation(tmp_path):
    config = tiny_config("train.iters=3", "train.ckpt_interval=3")
    mp.spawn(worker, args=(2, free_port(), str(tmp_path), config), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for key, value in ranks[0]["weights"].items():  # BatchNorm statistics too: broadcast before validation
        assert torch.equal(value, ranks[1]["weights"][key]), key
    assert ranks[0]["scores"] == ranks[1]["scores"]

    # the same checkpoint scored in one process gives the same confusion matrix, hence the same scores
    state = checkpoint.load(tmp_path / "checkpoints" / "iter_000003.pt")
    _, val = build_datasets(config, train=False)
    model = build_model(config, val.num_classes)
    model.load_state_dict(state["model"])
    single = evaluate(model, val, distributed.Context(0, 1, 0, torch.device("cpu")), config["eval"], progress=False)
    assert single == ranks[0]["scores"]


# A model whose gradient does not depend on how the batch is split (per-image GroupNorm for BatchNorm,
# no dropout) on data where every loss is a mean of per-image means (no padding, so no ignore pixels;
# the CAC inter term, a mean over images holding two classes, is off): two ranks of 2 images must then
# train exactly like one process with the batch of 4.
SPLIT_FREE = ("model.options.dropout=0", "model.options.w_inter=0", "data.ratio_range=[0.8,2.0]",
              "train.iters=2", "train.ckpt_interval=1", "eval.save_predictions=0", "data.val_options.length=2")


def per_image_norm(channels: int) -> torch.nn.Module:
    return torch.nn.GroupNorm(1, channels)


def split_free_worker(rank: int, world: int, port: int, work_dir: str, config: dict) -> None:
    """Trains 2 iterations, then again from the iteration-1 checkpoint into work_dir/resumed."""
    layers.NORMS["bn"] = per_image_norm
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        Trainer(config, os.path.join(work_dir, "straight"), progress=False).run()
        Trainer(config, os.path.join(work_dir, "resumed"), progress=False,
                resume=os.path.join(work_dir, "straight", "checkpoints", "iter_000001.pt")).run()
    finally:
        distributed.shutdown()


def test_two_processes_train_like_one_with_the_same_global_batch_and_resume_exactly(tmp_path, monkeypatch):
    config = tiny_config(*SPLIT_FREE)
    mp.spawn(split_free_worker, args=(2, free_port(), str(tmp_path), config), nprocs=2, join=True)
    ddp = checkpoint.load(tmp_path / "straight" / "checkpoints" / "iter_000002.pt")["model"]
    resumed = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "iter_000002.pt")["model"]
    for key in ddp:  # resuming under DDP repeats the straight DDP run bit for bit
        assert torch.equal(ddp[key], resumed[key]), key

    monkeypatch.setitem(layers.NORMS, "bn", per_image_norm)
    single = Trainer(config, tmp_path / "single", progress=False)
    start = {k: v.clone() for k, v in single.model.state_dict().items()}
    single.run()
    one = single.model.state_dict()
    update = torch.cat([(one[k] - start[k]).flatten() for k in start])
    error = torch.cat([(ddp[k] - one[k]).flatten() for k in start])
    # fp32 summation order differs (the gloo all-reduce adds two half-batch gradients): ~1e-7 relative
    assert update.norm() > 0 and error.norm() < 1e-5 * update.norm(), float(error.norm() / update.norm())
