"""The resumable sharded sample stream."""

from itertools import islice

import numpy as np

from csfr.data import SyntheticScenes, train_pipeline
from csfr.engine.sampling import EpochItems, ShardedStream


def take(stream, n):
    return list(islice(iter(stream), n))


def test_resuming_at_a_position_continues_the_same_stream():
    full = take(ShardedStream(10, seed=3), 37)
    assert take(ShardedStream(10, seed=3, start=23), 14) == full[23:]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    keys = take(ShardedStream(10, seed=0), 20)
    first, second = [i for e, i in keys if e == 0], [i for e, i in keys if e == 1]
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert first != second


def test_ranks_get_disjoint_equal_shares():
    shares = [take(ShardedStream(11, seed=1, rank=r, world_size=3), 3) for r in range(3)]
    indices = [i for share in shares for _, i in share]
    assert len(set(indices)) == 9 and all(len(s) == 3 for s in shares)


def test_epoch_items_switch_the_augmentation_stream():
    ds = SyntheticScenes("train", num_classes=4, size=32, length=4,
                         transform=train_pipeline((32, 32), (24, 24), (0.5, 2.0)))
    items = EpochItems(ds)
    a, b, a_again = items[(0, 1)], items[(1, 1)], items[(0, 1)]
    assert np.array_equal(a["image"], a_again["image"])
    assert not np.array_equal(a["image"], b["image"])
