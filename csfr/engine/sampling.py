"""An endless, resumable, rank-sharded stream of training samples.

Sample number p of a rank (counting from the start of training) is a pure function of
(seed, rank, world size, p): epoch e's order is a permutation seeded by (seed, e), dealt out to the
ranks in turn, and the item's augmentation is seeded by (dataset seed, e, index). Resuming at
iteration i therefore only needs p = i * samples per iteration, and gives the very batches an
uninterrupted run would have seen, whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from csfr.data.base import SegmentationDataset


class ShardedStream(torch.utils.data.Sampler):
    """Yields (epoch, index) pairs from sample `start` on; each epoch gives every rank
    len(dataset) // world_size samples (the remainder is left out, a different part each epoch)."""

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        self.per_rank = length // world_size
        if self.per_rank == 0:
            raise ValueError(f"the training set has {length} images, fewer than the {world_size} processes")
        self.length, self.seed, self.rank, self.world_size, self.start = length, seed, rank, world_size, start

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's indices in `epoch`."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.length, generator=gen)[self.rank::self.world_size][: self.per_rank]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            for index in self.order(epoch)[offset:].tolist():
                yield epoch, index
            epoch, offset = epoch + 1, 0


class EpochItems(torch.utils.data.Dataset):
    """Reads (epoch, index) keys: the dataset is switched to that epoch's augmentation stream first,
    in whichever worker process reads the item."""

    def __init__(self, dataset: SegmentationDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]
