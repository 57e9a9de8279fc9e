"""`wmpo train inverse-dynamics` on datasets in the project's on-disk format: frames encoded by the
bundled frozen autoencoder, priors from a trajectory VAE trained here, both variants trained and
saved (fp16 + manifest), the report's numbers (the residual IDM beats its prior after a short
run), the transition/window bookkeeping, and clear errors for bad configs and data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wmpo.data.episodes import Episode, ShardWriter, init_dataset
from wmpo.data.latents import LatentEpisodes
from wmpo.errors import ConfigError, DatasetError
from wmpo.models.inverse_dynamics import InverseDynamics
from wmpo.train.inverse_dynamics import (
    InverseDynamicsTrainConfig,
    Transitions,
    train_inverse_dynamics,
)
from wmpo.train.trajectory_vae import TrajectoryVAETrainConfig, train_trajectory_vae
from wmpo.utils.checkpoint import load_checkpoint

WORLD_MODEL = str(Path(__file__).resolve().parents[2] / "checkpoints" / "world-model")


def _dataset(root: Path, task: str, episodes: int, steps: int, seed: int) -> str:
    """Episodes whose frames show their actions, partly: a square moves by the xy actions (5 px per
    unit, wrapping around), its brightness is the last z action and its colour the last gripper
    action. A latent transition spans 2 actions and the frames show only their sum (xy) or the
    second one (z, gripper): the rest is what a prior is for. Actions are smooth plus noise, so the
    VAE's priors miss part of them and the frames know it."""
    init_dataset(root, 64, {"name": "synthetic"})
    w = ShardWriter(root, episodes_per_shard=8)
    rng = np.random.default_rng(seed)
    for i in range(episodes):
        t = np.linspace(0, 1, steps)[:, None]
        smooth = 0.6 * np.sin(6.28 * (t * rng.uniform(0.5, 2, 4) + rng.uniform(0, 1, 4)))
        actions = np.clip(smooth + rng.normal(0, 0.3, (steps, 4)), -1, 1).astype(np.float32)
        pos = np.mod(27 + np.concatenate([[[0, 0]], np.cumsum(5 * actions[:, :2], 0)]), 54).astype(int)
        frames = np.full((steps + 1, 64, 64, 3), 60, np.uint8)
        for k, (x, y) in enumerate(pos):
            z, grip = actions[k - 1, 2:] if k else (0.0, 0.0)
            level = 150 + 100 * z
            frames[k, y:y + 10, x:x + 10] = (level * (1 + grip) / 2, 120, level * (1 - grip) / 2)
        meta = {"task": task, "instruction": task, "seed": i, "source": {"kind": "expert"}}
        w.add(Episode(frames, actions, np.zeros(steps + 1, bool), meta))
    w.flush()
    return str(root)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("idm")
    train = _dataset(root / "train", "reach-v3", episodes=40, steps=40, seed=0)
    held = _dataset(root / "held", "push-v3", episodes=3, steps=40, seed=1)
    vae = root / "vae"
    train_trajectory_vae(TrajectoryVAETrainConfig(data=[train], out=str(vae), preset="tiny", steps=150,
                                                  batch_size=32, lr=3e-3), progress=False)
    return root, train, held, str(vae)


def test_transitions_line_up_with_their_windows(setup) -> None:
    from wmpo.train.world_model import load_autoencoder

    _, train, _, _ = setup
    ae, _ = load_autoencoder(WORLD_MODEL)
    data = LatentEpisodes.encode([train], ae, stride=2, min_frames=9)
    tr = Transitions.build(data, stride=2, steps=16, chunk=8)
    # 40 actions -> 20 latent transitions per episode; windows start at 0, 8, 16, 24
    assert len(tr.windows) == 40 * 4 and len(tr) == 40 * 4 * 8
    idx = np.arange(len(tr))
    assert torch.equal(tr.take(tr.windows, idx), tr.truth(idx))  # the window's slice is the transition's actions
    assert set(np.unique(tr.rows - tr.first)) == set(range(1, 21))  # every transition, never frame 0
    prev, nxt = tr.frames(idx[:5], context=3)
    assert prev.shape == (5, 3, 4, 16, 16) and nxt.shape == (5, 4, 16, 16)
    assert torch.equal(prev[0, 0], prev[0, 2])  # before the episode's start: its first frame repeated
    with pytest.raises(DatasetError, match="no episode is 48 actions long"):
        Transitions.build(data, stride=2, steps=48, chunk=8)


def test_training_beats_the_prior_and_saves_both_variants(setup) -> None:
    root, train, held, vae = setup
    out = root / "run"
    cfg = InverseDynamicsTrainConfig(data=[train], heldout_data=[held], out=str(out), trajectory_vae=vae,
                                     autoencoder=WORLD_MODEL, preset="tiny", steps=300, batch_size=64,
                                     lr=3e-3, warmup=10, prior_noise=1.5, val_fraction=0.25)
    report = train_inverse_dynamics(cfg, progress=False)
    val, heldout = report["val"], report["heldout_tasks"]
    assert val["episodes"] == 10 and heldout["episodes"] == 3 and report["train_episodes"] == 30
    assert set(val) == {"transitions", "episodes", "train_dist", "sigma=0", "sigma=0.75", "sigma=1.5"}
    assert set(val["train_dist"]) == {"prior", "residual", "full"}
    # noisier latents -> worse priors; the trained residual model improves on its prior and on
    # the full IDM (z and half of each xy pair are not in the frames), on both splits
    assert val["sigma=0"]["prior"] < val["sigma=1.5"]["prior"]
    # (residual / prior: 0.83 in most runs, 0.907 in one `make test` whose fixture VAE came out
    # slightly different: CPU float summation is not bit-stable across processes, so keep a margin)
    assert val["train_dist"]["residual"] < 0.95 * val["train_dist"]["prior"], val
    # Unseen tasks, 96 transitions only: the residual model's gain there is within the noise
    # (0.1237 vs 0.1238 in one run, the other way round in others), so only "not clearly worse".
    assert heldout["train_dist"]["residual"] < 1.05 * heldout["train_dist"]["prior"], heldout
    for split in (val, heldout):
        assert split["train_dist"]["residual"] < split["train_dist"]["full"], split
    for variant in ("residual", "full"):
        tensors, config, manifest = load_checkpoint(out / variant)
        assert all(t.element_size() == 2 for t in tensors.values())  # fp16
        assert manifest["variant"] == variant and manifest["metrics"]["val"] == json.loads(json.dumps(val))
        model = InverseDynamics.load(out / variant)
        assert model.cfg.residual == (variant == "residual") and model.cfg.action_dim == 8
    assert (out / "cache" / "train").is_dir() and (out / "cache" / "heldout").is_dir()


def test_bad_configs_and_data_are_refused(setup, tmp_path) -> None:
    _, train, _, vae = setup
    with pytest.raises(ConfigError, match="variants"):
        InverseDynamicsTrainConfig(data=[train], out=str(tmp_path), variants=["fancy"]).validate()
    with pytest.raises(ConfigError, match=r"prior_noise \(--prior-noise\)"):
        InverseDynamicsTrainConfig(data=[train], out=str(tmp_path), prior_noise=-1).validate()
    with pytest.raises(ConfigError, match="data"):
        InverseDynamicsTrainConfig(data=[], out=str(tmp_path)).validate()
    common = dict(out=str(tmp_path / "o"), trajectory_vae=vae, autoencoder=WORLD_MODEL, preset="tiny", steps=1)
    with pytest.raises(ConfigError, match="shares tasks"):
        train_inverse_dynamics(InverseDynamicsTrainConfig(data=[train], heldout_data=[train], **common),
                               progress=False)
    short = _dataset(tmp_path / "short", "reach-v3", episodes=2, steps=12, seed=0)
    with pytest.raises(DatasetError, match="no episode in .* is 16 actions long"):
        train_inverse_dynamics(InverseDynamicsTrainConfig(data=[short], **common), progress=False)


def test_cli_errors_are_one_line(capsys, tmp_path) -> None:
    from wmpo.cli import main

    base = ["train", "inverse-dynamics", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*base, "--variants", "fancy"]) == 2
    assert "variants (--variants)" in capsys.readouterr().err
    assert main([*base, "--trajectory-vae", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint at") and "Traceback" not in err
