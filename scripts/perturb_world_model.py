"""A deliberately wrong world model, for drift-monitor checks: a copy of a world-model
checkpoint whose video DiT weights carry Gaussian noise (std = ``--noise`` x each tensor's own
std, fixed seed). The frame autoencoder is left untouched, so frames decode as usual and the
perceptual distance (which uses that encoder) measures the same way; only the imagined
futures go wrong, as a stale or corrupted checkpoint would make them.

    python scripts/perturb_world_model.py --out /tmp/wm-wrong [--src checkpoints/world-model]
        [--noise 0.5] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from wmpo.sampling.world_model import TorchWorldModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default="checkpoints/world-model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--noise", type=float, default=0.5, help="noise std relative to each tensor's std")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    wm = TorchWorldModel.load(a.src)
    gen = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():
        for p in wm.dit.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * a.noise * p.std())
    wm.save(a.out, {"kind": "world-model", "perturbed": {"src": a.src, "noise": a.noise, "seed": a.seed}})
    print(f"wrote {a.out}: {a.src} with DiT noise {a.noise} x std (seed {a.seed})")


if __name__ == "__main__":
    main()
