"""Side-by-side cost of the old and new default sampler: one AR step of 16 rollouts (8 actions)
with 8 unguided steps vs 4 steps with action guidance 2, interleaved, medians of 5, one thread.

    python results/world-model-sampler/cost.py
"""

import statistics
import time

import numpy as np
import torch

from wmpo.sampling.world_model import TorchWorldModel

torch.set_num_threads(1)
wm = TorchWorldModel.load("checkpoints/world-model")
frames = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
acts = np.random.default_rng(1).uniform(-1, 1, (16, 8, 4)).astype(np.float32)
res: dict[tuple[int, float], list[float]] = {(8, 1.0): [], (4, 2.0): []}
for _ in range(5):
    for key in res:
        wm.with_sampler(*key)
        group = wm.fork(wm.start(frames[None], [0])[0], list(range(16)))
        for _ in range(2):  # a full context window first
            wm.step(group, acts)
        t = time.perf_counter()
        for _ in range(3):
            wm.step(group, acts)
        res[key].append((time.perf_counter() - t) / 3)
for k, v in res.items():
    print(k, "median s per AR step (batch 16):", round(statistics.median(v), 3), [round(x, 3) for x in v])
print("ratio 4xG2 / 8xG1:", round(statistics.median(res[(4, 2.0)]) / statistics.median(res[(8, 1.0)]), 3))
