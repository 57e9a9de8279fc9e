"""The action-following score of `wmpo eval world-model` and its ceiling."""

import numpy as np

from wmpo.eval.world_model import _follows


def test_a_perfect_imagination_follows_every_distinct_sequence():
    rng = np.random.default_rng(0)
    truths = rng.integers(0, 255, (4, 3, 8, 8, 3)).astype(np.float32)
    assert _follows(truths, truths) == [True] * 4
    # Imagined futures swapped between sequences 0 and 1 follow neither.
    assert _follows(truths[[1, 0, 2, 3]], truths) == [False, False, True, True]


def test_indistinguishable_true_futures_cap_the_score():
    """Two sequences with the same real future (an arm against a wall): even the true frames
    themselves score one of the two as a miss, which is why the eval reports the ceiling."""
    rng = np.random.default_rng(1)
    truths = rng.integers(0, 255, (3, 2, 8, 8, 3)).astype(np.float32)
    truths[2] = truths[1]
    assert sum(_follows(truths, truths)) == 2
