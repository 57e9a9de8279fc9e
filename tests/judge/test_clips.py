"""The clip rules of the learned success classifier (WMPO section 3.3)."""

import numpy as np
import pytest

from wmpo.judge.clips import (
    clip_starts,
    decide,
    first_passing_clip,
    pad_to_clip,
    subsample_indices,
    training_clips,
)


def test_subsampling_ends_on_the_last_frame():
    assert subsample_indices(10, 2).tolist() == [1, 3, 5, 7, 9]
    assert subsample_indices(9, 2).tolist() == [0, 2, 4, 6, 8]
    assert subsample_indices(3, 1).tolist() == [0, 1, 2]
    assert subsample_indices(1, 4).tolist() == [0]
    with pytest.raises(ValueError):
        subsample_indices(0, 2)


def test_sliding_window_has_stride_one():
    assert clip_starts(10, 8).tolist() == [0, 1, 2]
    assert clip_starts(8, 8).tolist() == [0]
    assert clip_starts(5, 8).tolist() == []


def test_short_videos_are_front_padded_with_their_first_frame():
    v = np.arange(3)[:, None] * np.ones((3, 2))
    p = pad_to_clip(v, 5)
    assert p[:, 0].tolist() == [0, 0, 0, 1, 2]


def test_success_gives_its_terminal_clip_as_the_only_positive():
    pos, neg = training_clips(num_frames=20, succeeded=True, clip_length=8, margin=2)
    assert pos.tolist() == [12]  # frames 12..19 end on the success frame
    # negatives end at least 2 frames before the end: last frame index <= 17
    assert neg.tolist() == list(range(0, 11))
    assert all(s + 7 <= 17 for s in neg)


def test_failure_gives_every_clip_as_negative():
    pos, neg = training_clips(num_frames=20, succeeded=False, clip_length=8, margin=2)
    assert pos.size == 0 and neg.tolist() == list(range(13))


def test_margin_zero_makes_every_non_terminal_clip_negative():
    pos, neg = training_clips(num_frames=10, succeeded=True, clip_length=8, margin=0)
    assert pos.tolist() == [2] and neg.tolist() == [0, 1]


def test_any_clip_passing_the_threshold_decides_success():
    assert decide(np.array([0.1, 0.7, 0.3]), 0.6) == (True, 1)
    assert decide(np.array([0.1, 0.5, 0.3]), 0.6) == (False, 1)
    assert first_passing_clip(np.array([0.1, 0.7, 0.9]), 0.6) == 1
    assert first_passing_clip(np.array([0.1]), 0.6) is None
    with pytest.raises(ValueError):
        decide(np.array([]), 0.5)
