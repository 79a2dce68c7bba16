"""What a run records on rank 0: a JSONL log (one line per event) and TensorBoard scalars."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


def _iteration(line: str) -> int | None:
    """The iteration of a JSONL record; None for a line cut short by a kill."""
    try:
        return int(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return None


class RunLog:
    """Appends to `work_dir/log.jsonl` and `work_dir/tensorboard/`; a no-op on other ranks.
    Resuming at iteration i drops the records and TensorBoard points logged after i by the
    interrupted run, so the log holds each iteration once."""

    def __init__(self, work_dir: Path, enabled: bool, start_iteration: int = 0):
        self.enabled = enabled
        if enabled:
            path = Path(work_dir) / "log.jsonl"
            if start_iteration and path.exists():
                kept = [line for line in path.read_text().splitlines(keepends=True)
                        if (i := _iteration(line)) is not None and i <= start_iteration]
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(kept))
                os.replace(tmp, path)
            self.jsonl = open(path, "a")  # noqa: SIM115 (open for the run's life)
            self.board = SummaryWriter(str(Path(work_dir) / "tensorboard"), purge_step=start_iteration or None)

    def write(self, event: str, iteration: int, values: dict, board_prefix: str | None = None) -> None:
        """One JSONL record, and `values`' numbers as TensorBoard scalars under board_prefix/."""
        if not self.enabled:
            return
        record = {"event": event, "iteration": iteration, "time": round(time.time(), 3), **values}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if board_prefix is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and value is not None:
                    self.board.add_scalar(f"{board_prefix}/{key}", value, iteration)
            self.board.flush()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.board.close()
