"""World-model speed: imagined frames/s (1 rollout, batch of 16; the step alone and step + decode),
the context KV-cache speedup per AR step, the fraction of the machine's measured matmul peak the
batched denoiser reaches, and the decoder's cost per frame by frames per decoder call (what
`TorchWorldModel.decode_batch` is chosen from).

Everything is measured side by side in one run; medians over repeats.

    python scripts/bench_world_model.py [--checkpoint checkpoints/world-model] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from wmpo.sampling.world_model import TorchWorldModel


def matmul_peak(n: int = 1024, repeats: int = 10) -> float:
    """Measured float32 matmul throughput of this machine in FLOP/s (median)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def denoiser_flops(wm: TorchWorldModel, batch: int, frames_ctx: int, frames_gen: int) -> float:
    """Matmul FLOPs of one cached denoiser call over the generated frames (linear layers + attention)."""
    c = wm.dit.config
    n = c.tokens_per_frame
    lq, lk = frames_gen * n, (frames_ctx + frames_gen) * n
    per_block = 2 * lq * (3 * c.dim * c.dim + c.dim * c.dim + 2 * c.dim * int(c.dim * c.mlp_ratio))
    per_block += 2 * 2 * lq * lk * c.dim  # QK^T and AV
    return batch * c.depth * per_block


def time_steps(wm: TorchWorldModel, batch: int, repeats: int, chunks: int = 3,
               decode: bool = False) -> float:
    """Median seconds per AR step (one chunk of 8 actions) for a batch of rollouts; with
    `decode`, the step and the decode of its frames (what a served chunk costs the model)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (1, wm.image_size, wm.image_size, 3), dtype=np.uint8)
    times = []
    for r in range(repeats):
        rollouts = wm.fork(wm.start(frames, [r])[0], list(range(batch)))
        wm.step(rollouts, rng.uniform(-1, 1, (batch, 8, 4)))  # warm-up: fills the context window
        for _ in range(chunks):
            acts = rng.uniform(-1, 1, (batch, 8, 4))
            t = time.perf_counter()
            latents = wm.step(rollouts, acts)
            if decode:
                wm.decode(latents)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def decode_ms_per_frame(wm: TorchWorldModel, frames: int, per_call: int, repeats: int) -> float:
    """Median milliseconds per frame to decode `frames` latents, `per_call` frames per call."""
    c = wm.ae.config
    latents = torch.randn(frames, c.latent_channels, c.latent_size, c.latent_size)
    saved, wm.decode_batch = wm.decode_batch, per_call
    try:
        wm.decode(latents)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            wm.decode(latents)
            times.append(time.perf_counter() - t)
    finally:
        wm.decode_batch = saved
    return 1000 * statistics.median(times) / frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default="checkpoints/world-model")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    wm = TorchWorldModel.load(a.checkpoint)
    per_step = 8 // wm.frame_stride
    res: dict = {"threads": torch.get_num_threads(), "sampler_steps": wm.sampler.steps}
    for batch in (1, 16):
        s = time_steps(wm, batch, a.repeats)
        sd = time_steps(wm, batch, a.repeats, decode=True)
        res[f"batch{batch}"] = {"seconds_per_ar_step": s, "imagined_frames_per_second": batch * per_step / s,
                                "env_steps_per_second": batch * 8 / s,
                                "step_and_decode_frames_per_second": batch * per_step / sd}
    # The decoder per frame by call size, for one batch-16 chunk's frames (and 4: batch 1).
    res["decode_batch"] = wm.decode_batch
    res["decode_ms_per_frame"] = {
        f"{frames}_frames_{per_call}_per_call": decode_ms_per_frame(wm, frames, per_call, a.repeats)
        for frames in (4, 16 * per_step) for per_call in (1, 2, 4, 8, 16, 64) if per_call <= frames}
    wm.sampler.use_cache = False
    s_nocache = time_steps(wm, 16, a.repeats)
    wm.sampler.use_cache = True
    res["kv_cache_speedup_batch16"] = s_nocache / res["batch16"]["seconds_per_ar_step"]
    # Action guidance runs the denoiser twice per step (with and without the actions).
    guidance = wm.sampler.action_guidance
    wm.sampler.action_guidance = 2.0 if guidance == 1.0 else guidance
    s_guided = time_steps(wm, 16, a.repeats)
    wm.sampler.action_guidance = 1.0
    s_plain = time_steps(wm, 16, a.repeats)  # measured again, next to the guided run
    wm.sampler.action_guidance = guidance
    res["action_guidance_cost_batch16"] = s_guided / s_plain
    peak = matmul_peak()
    flops = denoiser_flops(wm, 16, 1 + wm.sampler.context_frames, per_step) * wm.sampler.steps
    res["matmul_peak_gflops"] = peak / 1e9
    res["denoiser_gflops_batch16"] = flops / res["batch16"]["seconds_per_ar_step"] / 1e9
    res["fraction_of_peak"] = res["denoiser_gflops_batch16"] * 1e9 / peak
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
