"""Judge videos with a trained success classifier: per-clip scores and a verdict.

``SuccessJudge.judge_many`` scores several videos in one batched forward pass (the judge
service's engine batches across requests through it). A video comes with the env-step
spacing of its frames (``frame_stride``: 1 for real env frames, the world model's stride for
imagined ones) and is resampled to the classifier's own spacing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from wmpo.judge.clips import clip_starts, decide, first_passing_clip, pad_to_clip, subsample_indices
from wmpo.models.success_classifier import SuccessClassifier


@dataclass
class Verdict:
    success: bool
    score: float  # the best clip's probability
    clip_scores: list[float]  # one per stride-1 window over the resampled video
    best_clip: int
    done_clip: int | None  # first clip at or above the threshold
    done_frame: int | None  # index in the input video of the last frame of the done clip
    threshold: float
    frames_used: list[int] = field(default_factory=list)  # input frame indices the clips were cut from

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class SuccessJudge:
    def __init__(self, model: SuccessClassifier, threshold: float, sha256: str = "",
                 batch_clips: int = 256) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.model = model.eval()
        self.threshold = float(threshold)
        self.sha256 = sha256
        self.batch_clips = batch_clips
        self.config = model.config

    @classmethod
    def load(cls, directory: str) -> SuccessJudge:
        model, config, manifest = SuccessClassifier.from_checkpoint(directory)
        return cls(model, float(config.get("threshold", 0.5)), manifest.get("weights_sha256", "")[:12])

    def provenance(self) -> dict[str, Any]:
        return {"judge": "classifier", "classifier_sha256": self.sha256, "threshold": self.threshold,
                "clip_length": self.config.clip_length, "frame_stride": self.config.frame_stride}

    def resample(self, frames: np.ndarray, frame_stride: int) -> np.ndarray:
        """Indices of ``frames`` (spaced ``frame_stride`` env steps apart) at the classifier's spacing."""
        step, rem = divmod(self.config.frame_stride, frame_stride)
        if frame_stride < 1 or rem or step < 1:
            raise ValueError(f"frame_stride {frame_stride} must divide the classifier's frame stride "
                             f"{self.config.frame_stride}")
        return subsample_indices(len(frames), step)

    @torch.no_grad()
    def clip_probs(self, clips: np.ndarray, instructions: list[str]) -> np.ndarray:
        """Success probability (N,) of clips (N, L, H, W, 3) uint8 with their instructions."""
        text = self.model.embed(instructions)
        out = []
        for i in range(0, len(clips), self.batch_clips):
            logits = self.model(torch.from_numpy(np.ascontiguousarray(clips[i:i + self.batch_clips])),
                                text[i:i + self.batch_clips])
            out.append(torch.sigmoid(logits).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def judge_many(self, videos: list[np.ndarray], instructions: list[str],
                   frame_strides: list[int] | None = None, threshold: float | None = None) -> list[Verdict]:
        """One verdict per video (T_i, H, W, 3) uint8; all clips go through one batched pass."""
        if len(videos) != len(instructions):
            raise ValueError(f"need one instruction per video ({len(videos)}), got {len(instructions)}")
        strides = frame_strides or [1] * len(videos)
        thr = self.threshold if threshold is None else float(threshold)
        L = self.config.clip_length
        clips, owners, used = [], [], []
        for v, (video, stride) in enumerate(zip(videos, strides, strict=True)):
            s = self.config.image_size
            if video.ndim != 4 or video.shape[1:] != (s, s, 3) or video.dtype != np.uint8 or len(video) == 0:
                raise ValueError(f"video {v} must be (T>=1, {s}, {s}, 3) uint8, got {video.shape} {video.dtype}")
            idx = self.resample(video, stride)
            used.append(idx.tolist())
            seq = pad_to_clip(video[idx], L)
            for start in clip_starts(len(seq), L):
                clips.append(seq[start:start + L])
                owners.append(v)
        owners_np = np.asarray(owners)
        probs = self.clip_probs(np.stack(clips), [instructions[o] for o in owners])
        verdicts = []
        for v in range(len(videos)):
            scores = probs[owners_np == v]
            success, best = decide(scores, thr)
            done = first_passing_clip(scores, thr)
            pad = max(L - len(used[v]), 0)  # short videos were front-padded
            done_frame = used[v][done + L - 1 - pad] if done is not None else None
            verdicts.append(Verdict(success, float(scores[best]), [round(float(p), 4) for p in scores], best,
                                    done, done_frame, thr, used[v]))
        return verdicts
