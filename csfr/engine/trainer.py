"""The training loop: SGD + poly, AMP, gradient accumulation, DDP, validation, exact resume.

One iteration = `accum_steps` micro-batches of batch_size / (world_size * accum_steps) images per
process, then one optimiser step. Checkpoints hold everything the next iteration depends on
(weights, optimiser, schedule, grad scaler, every rank's RNG states, the iteration; the data
position follows from it, see csfr.engine.sampling), so a resumed run repeats the uninterrupted
one exactly on the CPU.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from csfr import configs
from csfr.data import collate
from csfr.engine import checkpoint, distributed
from csfr.engine.builders import build_datasets, build_model
from csfr.engine.evaluator import PredictionWriter, evaluate
from csfr.engine.precision import autocast
from csfr.engine.run_lock import RunLock
from csfr.engine.run_log import RunLog
from csfr.engine.sampling import EpochItems, ShardedStream
from csfr.engine.schedule import poly_scheduler, resume_note
from csfr.ops.checks import NonFiniteFeatures, check_label_values


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the weights were not updated with it."""


class StopRequested(Exception):
    """Ctrl-C / SIGTERM arrived; a checkpoint of the last finished iteration was saved."""


class _StopFlag:
    """First SIGINT/SIGTERM asks the loop to stop after the current iteration; a second one aborts."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: leave the handlers alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _check(train: dict, world_size: int) -> int:
    """The per-process micro-batch size; bad settings raise before any work (types and ranges:
    csfr.configs.schema)."""
    share = world_size * train["accum_steps"]
    if train["batch_size"] % share:
        raise ValueError(f"train.batch_size {train['batch_size']} is not divisible by world size x accum_steps "
                         f"= {world_size} x {train['accum_steps']}")
    return train["batch_size"] // share


def _last_line(error: Exception) -> str:
    """The message of an error raised in a DataLoader worker (torch re-raises it in the main process
    with the worker's traceback in front): its last line, without the type name."""
    last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    kind, sep, message = last.partition(": ")
    return message if sep and kind in {"ValueError", "OSError", "FileNotFoundError"} else last


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Trains `config` in `work_dir`; `run()` returns the final state and scores."""

    def __init__(self, config: dict, work_dir: str | Path, resume: str | None = None, progress: bool = True):
        self.cfg, self.work_dir, self.progress = config, Path(work_dir), progress
        self.train = config["train"]
        configs.validate(config)
        self.ctx = distributed.init(self.train["device"])
        self.micro_batch = _check(self.train, self.ctx.world_size)
        self.ckpt_dir = self.work_dir / "checkpoints"
        self.resume_from = self._resume_path(resume)
        _seed_everything(self.train["seed"] + self.ctx.rank)
        self.train_set, self.val_set = build_datasets(config)
        if list(self.val_set.class_names) != list(self.train_set.class_names):
            raise ValueError(f"the validation set has {self.val_set.num_classes} classes "
                             f"({', '.join(self.val_set.class_names[:4])}, ...) but the training set "
                             f"{self.train_set.num_classes} ({', '.join(self.train_set.class_names[:4])}, ...): "
                             "check data.val_options, which applies to the validation set only")
        self.model = build_model(config, self.train_set.num_classes).to(self.ctx.device)
        if self.ctx.distributed and self.train["sync_bn"]:
            if self.ctx.device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            elif self.ctx.is_main:
                print("note: SyncBatchNorm needs CUDA tensors; on the CPU each process keeps its own "
                      "BatchNorm statistics")
        self.optimizer = torch.optim.SGD(self.model.param_groups(self.train["lr"], self.train["head_lr_mult"]),
                                         lr=self.train["lr"], momentum=self.train["momentum"],
                                         weight_decay=self.train["weight_decay"])
        self.scheduler = poly_scheduler(self.optimizer, self.train)
        self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=self.train["amp"] == "float16")
        self.iteration, self.best = 0, None
        if self.resume_from is not None:
            self._restore(checkpoint.load(self.resume_from))

    def _resume_path(self, resume: str | None) -> Path | None:
        if resume is None:
            return None
        if resume == "auto":
            found = checkpoint.latest(self.ckpt_dir)
            if found is None:
                raise FileNotFoundError(f"--resume: no iter_*.pt checkpoint in {self.ckpt_dir}")
            return found
        return Path(resume)

    # -- checkpoints -------------------------------------------------------------------------

    def _state(self) -> dict:
        return {"iteration": self.iteration, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "best": self.best, "config": self.cfg,
                "num_classes": self.train_set.num_classes, "world_size": self.ctx.world_size,
                **checkpoint.class_info(self.val_set)}

    def _save(self) -> Path:
        """Checkpoint of the current iteration (every rank must call it: RNG states are gathered)."""
        rngs = distributed.gather_objects(checkpoint.rng_state())
        path = self.ckpt_dir / f"iter_{self.iteration:06d}.pt"
        if self.ctx.is_main:
            checkpoint.save({**self._state(), "rng": rngs}, path)
            checkpoint.prune(self.ckpt_dir, self.train["keep_checkpoints"])
        distributed.barrier()
        return path

    def _restore(self, state: dict) -> None:
        missing = [k for k in ("iteration", "optimizer", "scheduler", "scaler", "rng") if k not in state]
        if missing:
            raise ValueError(f"--resume: {self.resume_from} holds no training state ({', '.join(missing)} missing): "
                             "it is a weights file such as best.pt; resume from the run's iter_*.pt "
                             "(--resume auto), or start a new run with its weights as model.pretrained")
        checkpoint.load_weights(self.model, state["model"], str(self.resume_from))
        self.optimizer.load_state_dict(state["optimizer"])
        saved = state["config"]["train"]
        for key in ("momentum", "weight_decay"):  # the optimiser's state would keep the checkpoint's
            for group in self.optimizer.param_groups:
                group[key] = self.train[key]
            if saved.get(key, self.train[key]) != self.train[key] and self.ctx.is_main:
                print(f"note: train.{key} {saved[key]} -> {self.train[key]} since the checkpoint, applied "
                      "from the resumed iteration on")
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.best = state["iteration"], state["best"]
        note = resume_note(state["config"]["train"], self.train, self.iteration)
        if self.ctx.is_main:
            print(f"resumed from {self.resume_from} at iteration {self.iteration} of {self.train['iters']}")
            if note:
                print(note)
        rngs = state["rng"]
        if len(rngs) == self.ctx.world_size:
            checkpoint.set_rng_state(rngs[self.ctx.rank])
        elif self.ctx.is_main:
            print(f"note: checkpoint written by {len(rngs)} processes, resuming with {self.ctx.world_size}: "
                  "random streams are reseeded, so the run will not repeat the original exactly")

    # -- the loop -----------------------------------------------------------------------------

    def _loader(self) -> torch.utils.data.DataLoader:
        per_iteration = self.micro_batch * self.train["accum_steps"]
        stream = ShardedStream(len(self.train_set), self.train["seed"], self.ctx.rank, self.ctx.world_size,
                               start=self.iteration * per_iteration)
        workers = self.cfg["data"]["workers"]
        return torch.utils.data.DataLoader(
            EpochItems(self.train_set), batch_size=self.micro_batch, sampler=stream, num_workers=workers,
            collate_fn=collate, pin_memory=self.ctx.device.type == "cuda", drop_last=True,
            generator=torch.Generator(), persistent_workers=workers > 0)

    def _step(self, network, batches) -> dict[str, float]:
        """One optimiser step over the micro-batches; the mean of each named loss. A non-finite
        loss on any rank stops every rank before its backward pass."""
        accum = self.train["accum_steps"]
        totals: dict[str, float] = {}
        for micro in range(accum):
            try:
                batch = next(batches)
            except (ValueError, OSError) as e:  # a bad file: its one line, not a worker's traceback
                raise ValueError(f"{_last_line(e)} (met at iteration {self.iteration + 1}; "
                                 "python -m csfr.train --check-data lists every bad file)") from None
            # label values are checked here, on the CPU: on the device the check would cost a host sync
            check_label_values(batch["label"], self.model.num_classes, self.model.ignore_index, "training batch")
            images = batch["image"].to(self.ctx.device, non_blocking=True)
            labels = batch["label"].to(self.ctx.device, non_blocking=True)
            last = micro == accum - 1
            ddp = getattr(network, "_orig_mod", network)  # under torch.compile, the module it wraps
            sync = ddp.no_sync() if isinstance(ddp, DistributedDataParallel) and not last else \
                contextlib.nullcontext()
            with sync:
                try:
                    with autocast(self.ctx.device, self.train["amp"]):
                        losses = network(images, labels)["losses"]
                    loss = sum(losses.values())
                    values = {name: float(v.detach()) for name, v in losses.items()}
                    problem = None if math.isfinite(sum(values.values())) else \
                        ", ".join(f"{k}={v:.4g}" for k, v in values.items())
                except NonFiniteFeatures as e:
                    problem = str(e)
                if distributed.any_rank(problem is not None, self.ctx.device) if self.ctx.distributed \
                        else problem is not None:
                    raise NonFiniteLoss(
                        f"loss is not finite at iteration {self.iteration + 1} ({problem or 'on another rank'}); "
                        f"the weights were not updated. Last good checkpoint: "
                        f"{checkpoint.latest(self.ckpt_dir) or 'none written yet'}. Lower train.lr, add warmup "
                        "(train.warmup_iters), or use train.amp=bfloat16 instead of float16.")
                self.scaler.scale(loss / accum).backward()
            for name, value in values.items():
                totals[name] = totals.get(name, 0.0) + value / accum
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # a float16 GradScaler skips the optimizer's step when the gradients overflow (its first steps,
            # while the scale settles); the schedule still follows the iteration count, as it should, which
            # torch warns about as if the calls were out of order
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        return {**totals, "loss": sum(totals.values())}

    def validate(self, log: RunLog, final: bool = False) -> dict:
        distributed.broadcast_buffers(self.model)
        limit = self.cfg["eval"]["save_predictions"]
        writer = None
        if final and limit and self.ctx.is_main and self.ctx.world_size == 1:
            writer = PredictionWriter.for_dataset(self.work_dir / "predictions", self.val_set, limit=limit)
        result = evaluate(self.model, self.val_set, self.ctx, self.cfg["eval"], self.train["amp"], writer,
                          progress=self.progress)
        summary = {k: result[k] for k in ("mIoU", "mAcc", "aAcc")}
        log.write("val", self.iteration, summary, board_prefix="val")
        if result["mIoU"] is not None and (self.best is None or result["mIoU"] > self.best["mIoU"]):
            self.best = {**summary, "iteration": self.iteration}
            if self.ctx.is_main:
                checkpoint.save({"iteration": self.iteration, "model": self.model.state_dict(),
                                 "config": self.cfg, "num_classes": self.train_set.num_classes,
                                 "scores": result, **checkpoint.class_info(self.val_set)}, self.ckpt_dir / "best.pt")
        if self.ctx.is_main:
            configs.save({"iteration": self.iteration, **result, "best": self.best}, self.work_dir / "metrics.json")
        return result

    def run(self) -> dict:
        """Train to train.iters (validating every val_interval and at the end); returns
        {"iteration", "scores" (last validation), "best"}. The run folder is locked for the run
        (csfr.engine.run_lock): a second training there stops with one line."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(self.work_dir) if self.ctx.is_main else contextlib.nullcontext() as lock:
            if lock is not None:
                if lock.note:
                    print(lock.note)
                for partial in [*self.work_dir.glob("*.tmp"), *self.ckpt_dir.glob("*.tmp")]:
                    partial.unlink()  # left by a process killed while writing; ours holds the lock
            return self._run()

    def _run(self) -> dict:
        if self.ctx.is_main:
            configs.save(self.cfg, self.work_dir / "config.json")
        log = RunLog(self.work_dir, self.ctx.is_main, self.iteration)
        network = self.model
        if self.ctx.distributed:
            network = DistributedDataParallel(self.model, device_ids=[self.ctx.device.index]
                                              if self.ctx.device.type == "cuda" else None)
        if self.train["compile"] != "none":
            # the forward and its losses as one graph: fullgraph makes a graph break (a host read in the
            # step, which would also stop CUDA-graph capture) an error instead of a silent split;
            # "reduce-overhead" replays forward and backward as CUDA graphs on a GPU
            network = torch.compile(network, mode=self.train["compile"], fullgraph=True)
        self.model.train()
        iters, scores = self.train["iters"], None
        bar = tqdm(total=iters, initial=self.iteration, desc="train", dynamic_ncols=True,
                   disable=not (self.progress and self.ctx.is_main))
        running: dict[str, float] = {}
        try:
            if self.iteration >= iters:  # resumed a finished run: only score it
                scores = self.validate(log, final=True)
            with _StopFlag() as stop:
                batches = iter(self._loader())
                while self.iteration < iters:
                    values = self._step(network, batches)
                    self.iteration += 1
                    bar.update(1)
                    for k, v in values.items():
                        running[k] = running.get(k, 0.0) + v
                    if self.iteration % self.train["log_interval"] == 0 or self.iteration == iters:
                        n = self.train["log_interval"] if self.iteration % self.train["log_interval"] == 0 \
                            else self.iteration % self.train["log_interval"]
                        means = {k: v / n for k, v in running.items()}
                        lr = self.optimizer.param_groups[0]["lr"]
                        log.write("train", self.iteration, {**means, "lr": lr}, board_prefix="train")
                        bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}")
                        if not self.progress and self.ctx.is_main:  # no bar: the log line instead
                            print(f"iteration {self.iteration}/{iters}: " + ", ".join(
                                f"{k} {v:.4f}" for k, v in means.items()) + f", lr {lr:.2e}", flush=True)
                        running = {}
                    # validation before the checkpoint: a run killed while validating resumes from the
                    # previous checkpoint and validates again, so best.pt never misses an iteration
                    val_every = self.train["val_interval"]
                    if self.iteration == iters or (val_every and self.iteration % val_every == 0):
                        scores = self.validate(log, final=self.iteration == iters)
                        if self.ctx.is_main:
                            bar.write(f"iteration {self.iteration}: mIoU {scores['mIoU']}")
                    if self.iteration % self.train["ckpt_interval"] == 0 or self.iteration == iters:
                        self._save()
                    if distributed.any_rank(stop.requested, self.ctx.device) if self.ctx.distributed \
                            else stop.requested:
                        raise StopRequested
        except StopRequested:
            path = self._save()
            raise StopRequested(f"stopped at iteration {self.iteration}; checkpoint {path}; "
                                "continue with --resume auto") from None
        finally:
            bar.close()
            log.close()
        return {"iteration": self.iteration, "scores": scores, "best": self.best}
