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
