"""Validation losses of world-model checkpoints on a run's data, with the windows and noise the
trainer uses (``wmpo.train.world_model.validation_losses``), so checkpoints of different runs
compare on one footing: e.g. the bundled model against the v2 run on the play data.

    python scripts/world_model_val_losses.py --data datasets/play-v2/train \\
        --heldout-data datasets/play-v2/heldout --cache runs/world-model-v2/train/cache \\
        checkpoints/world-model checkpoints/world-model-v2

A plan generator (the action optimizer's, ``--trajectory-vae``) is validated on its plans and,
on the same windows, with the null plan: the gap is what the trajectory latent tells the model.

The checkpoints must share the autoencoder ``--autoencoder`` (the one the run was trained with);
with the run's ``--data`` and autoencoder, ``--cache`` reuses its encoded latents (a different
key would replace the run's cache, which then re-encodes once when it restarts).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from wmpo.data.latents import LatentEpisodes
from wmpo.data.play import expand_datasets
from wmpo.models.trajectory_vae import TrajectoryVAE
from wmpo.sampling.world_model import TorchWorldModel
from wmpo.train.world_model import (
    PlanInputs,
    load_autoencoder,
    validation_episodes,
    validation_losses,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--heldout-data", nargs="+", default=None)
    ap.add_argument("--cache", required=True, help="latent cache directory (a run's <out>/cache)")
    ap.add_argument("--autoencoder", default="checkpoints/world-model", help="as the run's --autoencoder")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--moving-threshold", type=float, default=0.1)
    ap.add_argument("--val-episodes", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trajectory-vae", default=None, help="the plan generators' VAE")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ae, ae_sha = load_autoencoder(a.autoencoder)
    stride = TorchWorldModel.load(a.checkpoints[0]).dit.config.frame_stride
    data = LatentEpisodes.encode_cached(expand_datasets(a.data), ae, ae_sha, stride, a.window + 1, f"{a.cache}/train")
    held = (LatentEpisodes.encode_cached(expand_datasets(a.heldout_data), ae, ae_sha, stride, a.window + 1,
                                         f"{a.cache}/heldout") if a.heldout_data else None)
    val_eps = validation_episodes(len(data), a.val_episodes, a.seed)
    for path in a.checkpoints:
        wm = TorchWorldModel.load(path)
        if wm.ae.config != ae.config:
            raise SystemExit(f"{path} has another autoencoder than {a.autoencoder}")
        dit = wm.dit.eval()
        planner = None
        if dit.config.has_plan:
            if not a.trajectory_vae:
                raise SystemExit(f"{path} is a plan generator: give --trajectory-vae")
            planner = PlanInputs(TrajectoryVAE.load(a.trajectory_vae)[0], stride,
                                 data.tasks + (held.tasks if held is not None else []))
        step = json.loads((Path(path) / "manifest.json").read_text()).get("training", {}).get("step")
        rec = {"checkpoint": path, "step": step}
        for name, eps, pool in (("val", data, val_eps), ("heldout_val", held, None)):
            if eps is None:
                continue
            for keep, suffix in ((True, ""), (False, "_null_plan")) if planner else ((True, ""),):
                v, vm = validation_losses(dit, eps, pool, a.batch_size, a.window, a.moving_threshold, planner, keep)
                rec |= {f"{name}_loss{suffix}": round(v, 4), f"{name}_loss_moving{suffix}": round(vm, 4)}
        print(json.dumps(rec))


if __name__ == "__main__":
    main()
