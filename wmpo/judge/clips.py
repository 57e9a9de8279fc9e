"""Clip sampling and the sliding-window decision of the learned success classifier (WMPO 3.3).

A video is judged as overlapping clips of L frames. Frames are first subsampled to the
classifier's ``frame_stride`` (the world model's latent frame rate, so real and imagined
videos look alike), aligned to the *last* frame: a real episode ends on the frame where the
task succeeded, and that frame must be in the positive clip.

Training clips (WMPO): positives are the terminal clips of successful episodes; negatives are
middle clips of successes and any clip of failures. Departure: clips of a success that end
fewer than ``margin`` subsampled frames before its end are neither (the success state is
often visible a frame or two before the simulator's flag flips, so calling them negative
would teach the classifier noise).

Decision: a stride-1 sliding window over the subsampled video; the video is a success when
any clip's probability reaches the threshold (chosen on a validation split).
"""

from __future__ import annotations

import numpy as np


def subsample_indices(length: int, stride: int) -> np.ndarray:
    """Indices of a video of ``length`` frames taken every ``stride`` frames, ending on the last."""
    if length < 1 or stride < 1:
        raise ValueError(f"need length >= 1 and stride >= 1, got {length}, {stride}")
    return np.arange((length - 1) % stride, length, stride)


def clip_starts(num_frames: int, clip_length: int) -> np.ndarray:
    """Start index of every stride-1 window of ``clip_length`` frames (empty if the video is shorter)."""
    return np.arange(max(num_frames - clip_length + 1, 0))


def pad_to_clip(frames: np.ndarray, clip_length: int) -> np.ndarray:
    """A video shorter than one clip is front-padded with copies of its first frame."""
    if len(frames) >= clip_length:
        return frames
    pad = np.repeat(frames[:1], clip_length - len(frames), axis=0)
    return np.concatenate([pad, frames])


def training_clips(num_frames: int, succeeded: bool, clip_length: int,
                   margin: int) -> tuple[np.ndarray, np.ndarray]:
    """(positive clip starts, negative clip starts) of one subsampled episode of ``num_frames``.

    A success gives one positive (its terminal clip) and negatives among the clips that end at
    least ``margin`` (at least 1) frames before its end; a failure gives only negatives, all its clips.
    """
    starts = clip_starts(num_frames, clip_length)
    if len(starts) == 0:
        return starts, starts
    if not succeeded:
        return starts[:0], starts
    ends = starts + clip_length - 1
    return starts[-1:], starts[ends <= num_frames - 1 - max(margin, 1)]


def decide(clip_scores: np.ndarray, threshold: float) -> tuple[bool, int]:
    """Sliding-window decision: (success, index of the best clip)."""
    scores = np.asarray(clip_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no clips to decide on")
    best = int(scores.argmax())
    return bool(scores[best] >= threshold), best


def first_passing_clip(clip_scores: np.ndarray, threshold: float) -> int | None:
    """Index of the first clip at or above the threshold (the 'done' step), or None."""
    hits = np.flatnonzero(np.asarray(clip_scores) >= threshold)
    return int(hits[0]) if hits.size else None
