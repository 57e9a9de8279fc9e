"""The world model's long run survives kills and moves between machines (issue 15).

Synthetic episodes (a square moving over a textured background) and a random tiny
autoencoder keep these tests at a few seconds; the real-data pipeline is covered by
test_world_model_train.py.
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import wmpo.train.world_model as twm
from wmpo.data.episodes import Episode, ShardWriter, init_dataset
from wmpo.errors import ConfigError
from wmpo.models.autoencoder import PRESETS, FrameAutoencoder
from wmpo.sampling.world_model import TorchWorldModel
from wmpo.train.common import load_train_state
from wmpo.train.world_model import (
    RESUME_JSON,
    RESUME_WEIGHTS,
    WorldModelTrainConfig,
    train_world_model,
)
from wmpo.utils.checkpoint import save_checkpoint


def _episode(task: str, seed: int, steps: int = 24) -> Episode:
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    actions = rng.uniform(-1, 1, (steps, 4)).astype(np.float32)
    frames, (y, x) = [], (20, 20)
    for t in range(steps + 1):
        f = background.copy()
        f[y:y + 8, x:x + 8] = 255
        frames.append(f)
        if t < steps:
            y = int(np.clip(y + 3 * actions[t, 0], 0, 56))
            x = int(np.clip(x + 3 * actions[t, 1], 0, 56))
    meta = {"task": task, "instruction": task, "seed": seed, "source": {"kind": "random-walk"}}
    return Episode(np.stack(frames), actions, np.zeros(steps + 1, bool), meta)


def _dataset(root, tasks, episodes=3):
    init_dataset(root, 64, {"name": "synthetic"})
    w = ShardWriter(root, episodes_per_shard=4)
    for i, task in enumerate(tasks):
        for s in range(episodes):
            w.add(_episode(task, 10 * i + s))
    w.flush()
    return str(root)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("wm-resume")
    play = root / "play"
    _dataset(play / "train" / "a", ["reach-v3", "push-v3"])
    _dataset(play / "train" / "b", ["door-open-v3"])
    heldout = _dataset(play / "heldout" / "a", ["door-close-v3"], episodes=2)
    torch.manual_seed(0)
    ae = FrameAutoencoder(PRESETS["tiny"]).eval()
    save_checkpoint(root / "ae", ae.state_dict(), ae.checkpoint_config(), {"kind": "autoencoder"})
    return root, str(play / "train"), heldout


def _config(root, data, heldout, out, export=None, **kw):
    base = dict(data=[data], heldout_data=[heldout], autoencoder=str(root / "ae"), out=str(root / out),
                preset="tiny", steps=8, batch_size=4, window=4, log_every=2, eval_every=4, save_every=4,
                warmup=2, moving_weight=3.0, lr_schedule="wsd", rewarm=2,
                export=str(root / export) if export else None, data_command="synthetic")
    return WorldModelTrainConfig(**{**base, **kw})


def _interrupt_after(monkeypatch, steps: int):
    """Make the run die at step ``steps`` + 1, after the save at ``steps`` (like a kill)."""
    calls = {"n": 0}
    original = twm.wsd_lr

    def dying(step, *a):
        calls["n"] += 1
        if calls["n"] > steps + 1:
            raise KeyboardInterrupt
        return original(step, *a)

    monkeypatch.setattr(twm, "wsd_lr", dying)


def test_killed_run_resumes_bit_identically(setup, monkeypatch):
    root, data, heldout = setup
    train_world_model(_config(root, data, heldout, "full"), progress=False)
    cfg = _config(root, data, heldout, "killed")
    with monkeypatch.context() as m:
        _interrupt_after(m, 4)
        with pytest.raises(KeyboardInterrupt):
            train_world_model(cfg, progress=False)
    assert load_train_state(root / "killed" / "train_state.pt")["step"] == 4
    train_world_model(cfg, progress=False)  # from the latents cached by the first session
    assert len(list((root / "killed" / "cache" / "train").glob("latents-*.pt"))) == 1
    a = TorchWorldModel.load(root / "full").dit.state_dict()
    b = TorchWorldModel.load(root / "killed").dit.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (root / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("event") == "start"] == [0, 4]
    val = [r for r in log if "heldout_val_loss" in r]
    assert val and all(np.isfinite(r["val_loss_moving"]) for r in val)


def test_run_continues_on_a_new_machine_from_the_export_alone(setup, monkeypatch):
    root, data, heldout = setup
    cfg = _config(root, data, heldout, "machine-a", export="repo/world-model-v2")
    with monkeypatch.context() as m:
        _interrupt_after(m, 4)
        with pytest.raises(KeyboardInterrupt):
            train_world_model(cfg, progress=False)
    export = root / "repo" / "world-model-v2"
    # Replaced, never accumulated: one usable checkpoint and the compact state, nothing else.
    assert sorted(p.name for p in export.iterdir()) == sorted(
        ["config.json", "manifest.json", "model.safetensors", RESUME_JSON, RESUME_WEIGHTS])
    assert sorted(p.name for p in export.parent.iterdir()) == ["world-model-v2"]
    meta = json.loads((export / RESUME_JSON).read_text())
    assert meta["step"] == 4 and meta["data_command"] == "synthetic" and meta["data"]["episodes"] == 9
    # The compact state: fp16 raw weights (2 bytes a parameter) and the data-order generator.
    state = load_train_state(root / "machine-a" / "train_state.pt")
    tensors = load_file(export / RESUME_WEIGHTS)
    assert torch.equal(tensors.pop("gen_state"), state["gen"])
    assert all(v.dtype == torch.float16 for v in tensors.values())
    assert all(torch.equal(tensors[f"dit.{k}"], v.half()) for k, v in state["model"].items())
    n_params = sum(v.numel() for v in state["model"].values())
    assert (export / RESUME_WEIGHTS).stat().st_size < 2 * n_params + 16_000
    TorchWorldModel.load(export)  # the export is a usable world model

    # Machine B: the repository only (no runs/ directory), the same command.
    cfg_b = _config(root, data, heldout, "machine-b", export="repo/world-model-v2", rewarm=4)
    out = train_world_model(cfg_b, progress=False)
    log = [json.loads(line) for line in (root / "machine-b" / "train_log.jsonl").read_text().splitlines()]
    start = next(r for r in log if r.get("event") == "start")
    assert start["step"] == 4 and start["resumed_from"] == str(export)
    lrs = [r["lr"] for r in log if "lr" in r]
    assert lrs[0] < lrs[1]  # re-warming after fresh AdamW moments
    assert np.isfinite(out["val_loss"]) and json.loads((export / RESUME_JSON).read_text())["step"] == 8
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["complete"] and manifest["data"]["heldout_tasks"] == ["door-close-v3"]


def test_resume_refuses_another_configuration(setup, monkeypatch):
    root, data, heldout = setup
    cfg = _config(root, data, heldout, "conf-a", export="repo-c/wm")
    with monkeypatch.context() as m:
        _interrupt_after(m, 4)
        with pytest.raises(KeyboardInterrupt):
            train_world_model(cfg, progress=False)
    with pytest.raises(ConfigError, match="lr"):
        train_world_model(_config(root, data, heldout, "conf-a", export="repo-c/wm", lr=1e-3), progress=False)
    with pytest.raises(ConfigError, match="moving_weight"):
        train_world_model(_config(root, data, heldout, "conf-b", export="repo-c/wm", moving_weight=0.0),
                          progress=False)


def test_heldout_tasks_must_not_be_trained_on(setup):
    root, data, _ = setup
    with pytest.raises(ConfigError, match="shares tasks"):
        train_world_model(_config(root, data, str(root / "play" / "train" / "b"), "overlap"), progress=False)


def test_packed_latents_train_where_the_episodes_are_not(setup, capsys):
    """``wmpo export latents`` -> one small file; a run on it sees the same episodes (fingerprint)
    and latents within half an 8-bit step of the encoded ones (a GPU node without MetaWorld)."""
    from wmpo.cli import main
    from wmpo.data.latents import LatentEpisodes
    from wmpo.data.play import expand_datasets

    root, data, heldout = setup
    packed = root / "packed-train.npz"
    assert main(["export", "latents", "--data", data, "--autoencoder", str(root / "ae"), "--out", str(packed),
                 "--window", "4"]) == 0
    info = json.loads(capsys.readouterr().out)
    ae, ae_sha = twm.load_autoencoder(str(root / "ae"))
    exact = LatentEpisodes.encode(expand_datasets([data]), ae, 2, 5)
    got, meta = LatentEpisodes.load_packed(packed)
    assert meta["autoencoder_sha256"] == ae_sha and meta["frame_stride"] == 2 and got.tasks == exact.tasks
    assert np.array_equal(got.starts, exact.starts) and np.array_equal(got.lengths, exact.lengths)
    assert torch.equal(got.actions, exact.actions)
    err = (got.latents.float() - exact.latents.float()).abs().max().item()
    assert err <= info["quantization_max_abs"] + 2e-3 and info["quantization_max_abs"] < 0.02 * meta["latent_std"] * 10
    out = train_world_model(_config(root, str(packed), heldout, "from-packed", data_command="packed"), progress=False)
    ref = train_world_model(_config(root, data, heldout, "from-episodes"), progress=False)
    assert abs(out["val_loss"] - ref["val_loss"]) < 0.1 * ref["val_loss"]
    fp = [json.loads((root / d / "manifest.json").read_text())["data"]["fingerprint"]
          for d in ("from-packed", "from-episodes")]
    assert fp[0] == fp[1]
    other = root / "ae-other"
    torch.manual_seed(1)
    ae2 = FrameAutoencoder(PRESETS["tiny"]).eval()
    save_checkpoint(other, ae2.state_dict(), ae2.checkpoint_config(), {"kind": "autoencoder"})
    with pytest.raises(ConfigError, match="encoded with autoencoder"):
        train_world_model(_config(root, str(packed), heldout, "wrong-ae", autoencoder=str(other)), progress=False)
    with pytest.raises(ConfigError, match="latent frames"):
        train_world_model(_config(root, str(packed), heldout, "long-window", window=13), progress=False)


def test_time_budget_shortens_the_run_and_its_schedule(setup):
    root, data, heldout = setup
    out = train_world_model(_config(root, data, heldout, "budget", steps=500, time_budget=1.0, save_every=1000,
                                    eval_every=1000), progress=False)
    log = [json.loads(line) for line in (root / "budget" / "train_log.jsonl").read_text().splitlines()]
    fitted = next(r for r in log if r.get("event") == "time-budget")
    timed = fitted["step"]
    assert timed == twm.TIMING_STEPS + 10 and fitted["steps"] == timed + 1  # nothing fits in 1 s - 30 s
    assert next(r for r in log if r.get("event") == "done")["step"] == timed + 1
    manifest = json.loads((root / "budget" / "manifest.json").read_text())
    assert manifest["training"]["steps"] == timed + 1 and np.isfinite(out["val_loss"])
    with pytest.raises(ConfigError, match="CUDA|cpu"):
        train_world_model(_config(root, data, heldout, "cuda", device="cuda", trajectory_vae="x"), progress=False)
