"""Tiny end-to-end runs of the world-model pipeline on real MetaWorld data:
collect -> train autoencoder -> train DiT (with a resume) -> evaluate against the simulator."""

import json

import pytest
import torch

from wmpo.data.collect import CollectConfig, collect
from wmpo.eval.world_model import WorldModelEvalConfig, evaluate_world_model
from wmpo.sampling.world_model import TorchWorldModel
from wmpo.train.autoencoder import AutoencoderTrainConfig, train_autoencoder
from wmpo.train.world_model import WorldModelTrainConfig, train_world_model


def set_served_sampler(checkpoint, **fields) -> None:
    """Give a saved world model other served-sampler defaults (as an evaluated model has)."""
    path = checkpoint / "config.json"
    cfg = json.loads(path.read_text())
    cfg["sampler"] |= fields
    path.write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("wm")
    data = str(root / "data")
    collect(CollectConfig(out=data, tasks=["reach-v3", "push-v3"], source="perturbed", episodes=3,
                          max_steps=60, workers=2), progress=False)
    ae = train_autoencoder(AutoencoderTrainConfig(data=[data], out=str(root / "ae"), preset="tiny", steps=20,
                                                  batch_size=8, log_every=5), progress=False)
    return root, data, ae


def test_autoencoder_checkpoint_has_normalized_latents(pipeline):
    root, data, ae = pipeline
    manifest = json.loads((root / "ae" / "manifest.json").read_text())
    assert manifest["metrics"]["val"]["psnr"] > 5
    assert {"psnr", "psnr_moving"} <= set(ae["val"])


def test_world_model_training_resumes_to_the_same_weights(pipeline):
    root, data, _ = pipeline
    common = dict(data=[data], autoencoder=str(root / "ae"), preset="tiny", batch_size=4, window=4,
                  log_every=2, eval_every=4, save_every=4)
    train_world_model(WorldModelTrainConfig(out=str(root / "full"), steps=8, **common), progress=False)
    # Interrupted run: stop after 4 steps (leaving train_state.pt), then resume to 8.
    cfg = WorldModelTrainConfig(out=str(root / "resumed"), steps=8, **common)
    import wmpo.train.world_model as twm

    original = twm.cosine_lr
    calls = {"n": 0}

    def crash_after_four(step, *a):
        calls["n"] += 1
        if calls["n"] > 5:  # the 5th step runs after the checkpoint at step 4
            raise KeyboardInterrupt
        return original(step, *a)

    twm.cosine_lr = crash_after_four
    try:
        with pytest.raises(KeyboardInterrupt):
            train_world_model(cfg, progress=False)
    finally:
        twm.cosine_lr = original
    assert (root / "resumed" / "train_state.pt").exists()
    train_world_model(cfg, progress=False)
    a = TorchWorldModel.load(root / "full").dit.state_dict()
    b = TorchWorldModel.load(root / "resumed").dit.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_motion_conditioning_fine_tune_starts_where_the_model_it_extends_is(pipeline):
    """--motion-conditioning on a model without it: the new inputs start at zero weight, so the
    starting validation loss is the plain fine-tune's, to the bit; the result loads and samples."""
    root, data, _ = pipeline
    if not (root / "full").exists():
        test_world_model_training_resumes_to_the_same_weights(pipeline)
    common = dict(data=[data], autoencoder=str(root / "ae"), init=str(root / "full"), batch_size=4, window=4,
                  steps=2, log_every=1, eval_every=2, save_every=100)
    plain = train_world_model(WorldModelTrainConfig(out=str(root / "ft-plain"), **common), progress=False)
    motion = train_world_model(WorldModelTrainConfig(out=str(root / "ft-motion"), motion_conditioning=True,
                                                     **common), progress=False)
    assert motion["init_val_loss"] == plain["init_val_loss"]
    wm = TorchWorldModel.load(root / "ft-motion")
    assert wm.dit.config.motion_conditioning
    frames = (torch.rand(64, 64, 3) * 255).byte().numpy()
    group = wm.fork(wm.start(frames[None], [0])[0], [1, 2])
    assert wm.step(group, torch.zeros(2, 8, 4).numpy()).shape[:2] == (2, 4)


def test_fine_tune_keeps_the_init_models_served_sampler(pipeline, tmp_path):
    """A fine-tune serves with the sampler its init was evaluated with (the bundled model's is
    4 steps with action guidance 2), not the library default."""
    import shutil

    root, data, _ = pipeline
    if not (root / "full").exists():
        test_world_model_training_resumes_to_the_same_weights(pipeline)
    init = tmp_path / "init"
    shutil.copytree(root / "full", init, ignore=shutil.ignore_patterns("train_state.pt", "cache"))
    set_served_sampler(init, steps=3, action_guidance=2.0)
    train_world_model(WorldModelTrainConfig(out=str(tmp_path / "ft"), data=[data], autoencoder=str(root / "ae"),
                                            init=str(init), batch_size=4, window=4, steps=1, save_every=100),
                      progress=False)
    sampler = TorchWorldModel.load(tmp_path / "ft").sampler
    assert (sampler.steps, sampler.action_guidance) == (3, 2.0)


def test_eval_against_the_real_simulator_runs_and_reports(pipeline, tmp_path):
    root, _, _ = pipeline
    r = evaluate_world_model(WorldModelEvalConfig(checkpoint=str(root / "full"), tasks=["push-v3"], cases=2,
                                                  horizon=16, prefix_max=16, strip=str(tmp_path / "s.png")),
                             progress=False)
    assert r["K"] == 4 and set(r["action_following"]) == {"8", "16"}
    assert r["action_following"]["16"]["n"] == 8
    assert 0.0 <= r["action_following"]["16"]["ae_ceiling"] <= 1.0
    by_seq = r["action_following"]["16"]["by_sequence"]
    assert list(by_seq) == ["real", "other", "negated", "random"]
    assert abs(sum(by_seq.values()) / 4 - r["action_following"]["16"]["accuracy"]) < 1e-9
    assert len(r["fidelity"]["psnr"]) == 8 and (tmp_path / "s.png").exists()
    # A copy of the last frame is a real baseline: its error grows with the horizon on average.
    assert r["fidelity"]["copy_psnr"][0] >= r["fidelity"]["copy_psnr"][-1] - 1.0


def test_plan_generator_fine_tunes_from_a_world_model(pipeline):
    """The action optimizer's generator: a world model fine-tuned with plan conditioning on a
    trajectory VAE's tokens; the checkpoint records the VAE, and bad combinations are refused."""
    from wmpo.errors import ConfigError
    from wmpo.models.trajectory_vae import PRESETS as VAE_PRESETS
    from wmpo.models.trajectory_vae import TrajectoryVAE
    from wmpo.utils.checkpoint import save_checkpoint

    root, data, _ = pipeline
    common = dict(data=[data], autoencoder=str(root / "ae"), preset="tiny", batch_size=4, window=4,
                  log_every=2, eval_every=2, save_every=100)
    train_world_model(WorldModelTrainConfig(out=str(root / "wm0"), steps=2, **common), progress=False)
    set_served_sampler(root / "wm0", action_guidance=2.0)  # as the bundled world model serves
    vae = TrajectoryVAE(VAE_PRESETS["tiny"])  # 2 chunks x 8 actions -> 2 tokens of 8: plans of 8 latent frames
    vae_sha = save_checkpoint(root / "vae", {k: v.half() for k, v in vae.state_dict().items()},
                              vae.checkpoint_config(), {"kind": "trajectory-vae"})
    r = train_world_model(WorldModelTrainConfig(out=str(root / "plan"), steps=4, init=str(root / "wm0"),
                                                trajectory_vae=str(root / "vae"), **common), progress=False)
    assert r["val_loss"] > 0 and r["init_val_loss"] > 0
    wm = TorchWorldModel.load(root / "plan")
    assert wm.sampler.action_guidance == 1.0  # its frames carry no actions to guide on
    c = wm.dit.config
    assert (c.plan_tokens, c.plan_dim, c.plan_frames, c.text_dim) == (2, 8, 8, 384)
    manifest = json.loads((root / "plan" / "manifest.json").read_text())
    assert manifest["trajectory_vae_sha256"] == vae_sha[:12]
    with pytest.raises(ConfigError, match="more frames than a plan covers"):
        train_world_model(WorldModelTrainConfig(out=str(root / "bad"), steps=2, trajectory_vae=str(root / "vae"),
                                                **{**common, "window": 12}), progress=False)
    # The null plan only on windows of episodes that reached their task (an expert's here).
    expert = str(root / "expert")
    collect(CollectConfig(out=expert, tasks=["reach-v3"], source="expert", episodes=1, max_steps=60, workers=1),
            progress=False)
    r = train_world_model(WorldModelTrainConfig(out=str(root / "plan-succ"), steps=2, init=str(root / "wm0"),
                                                trajectory_vae=str(root / "vae"), plan_drop_on="successes",
                                                **{**common, "data": [data, expert]}), progress=False)
    assert r["val_loss"] > 0
    saved = json.loads((root / "plan-succ" / "manifest.json").read_text())
    assert '"plan_drop_on": "successes"' in json.dumps(saved)
    with pytest.raises(ConfigError, match="plan-drop-on"):
        WorldModelTrainConfig(out=str(root / "bad"), trajectory_vae=str(root / "vae"), plan_drop_on="failures",
                              **common).validate()


def test_plan_generator_action_following_is_evaluated_against_the_simulator(pipeline, tmp_path):
    """The counterfactual evaluation of the world model, run on the plan generator: sequences
    go in through the VAE's latents (the previous test's checkpoints: 16 actions per plan)."""
    root, _, _ = pipeline
    if not (root / "plan").exists():
        test_plan_generator_fine_tunes_from_a_world_model(pipeline)
    r = evaluate_world_model(WorldModelEvalConfig(checkpoint=str(root / "plan"), tasks=["push-v3"], cases=2,
                                                  trajectory_vae=str(root / "vae")), progress=False)
    assert r["config"]["horizon"] == 16 and set(r["action_following"]) == {"8", "16"}
    assert r["action_following"]["16"]["n"] == 8 and len(r["fidelity"]["psnr"]) == 8
    from wmpo.errors import ConfigError

    with pytest.raises(ConfigError, match="plan generator"):
        evaluate_world_model(WorldModelEvalConfig(checkpoint=str(root / "plan"), tasks=["push-v3"], cases=2),
                             progress=False)


def test_self_forcing_imagines_the_recent_context_through_the_served_sampler():
    """Windows picked for self-forcing keep the anchor, the first real frame and every generated
    frame; frames 2 .. n_context-1 become what the sampler imagines from the same start, actions
    and seed (checked against a rollout run directly); windows not picked stay real."""
    from wmpo.models.flow import FlowBatch
    from wmpo.models.video_dit import PRESETS, VideoDiT
    from wmpo.sampling.rollout import SamplerConfig, start_rollout, step_rollouts
    from wmpo.train.world_model import imagine_context

    torch.manual_seed(0)
    model = VideoDiT(PRESETS["tiny"]).eval()
    b, f, c = 4, 9, PRESETS["tiny"]
    lat = torch.randn(b, f, c.latent_channels, c.latent_size, c.latent_size)
    act = torch.randn(b, f, c.frame_action_dim)
    has = torch.ones(b, f, dtype=torch.bool)
    has[:, 0] = False
    batch = FlowBatch(lat.clone(), act, has, torch.arange(f).expand(b, f), torch.tensor([2, 3, 6, 8]))
    cfg = SamplerConfig(steps=2)
    assert imagine_context(model, batch, 0.0, cfg, torch.Generator().manual_seed(1)) == 0
    assert torch.equal(batch.latents, lat)
    g = torch.Generator().manual_seed(1)
    assert imagine_context(model, batch, 1.0, cfg, g) == 3  # the n_context=2 window has nothing to imagine
    for i, n_ctx in enumerate([2, 3, 6, 8]):
        assert torch.equal(batch.latents[i, :2], lat[i, :2]) and torch.equal(batch.latents[i, n_ctx:], lat[i, n_ctx:])
        assert (batch.latents[i, 2:n_ctx] - lat[i, 2:n_ctx]).abs().amax(dim=(1, 2, 3)).gt(0).all()
    # Window 2 (n_context 6), first AR step, reproduced with the sampler itself.
    torch.rand(b, generator=(g2 := torch.Generator().manual_seed(1)))  # imagine_context's draws, in order
    seeds = torch.randint(0, 2**31 - 1, (b,), generator=g2)
    r = start_rollout(lat[2, 0], int(seeds[2]), lat[2, 1:2], act[2, 1:2], act.shape[-1])
    ref = step_rollouts(model, [r], act[2, 2:4].reshape(1, -1, 4), cfg)[0]
    assert torch.allclose(batch.latents[2, 2:4], ref, atol=1e-5)


def test_world_model_trains_with_self_forcing(pipeline):
    from wmpo.errors import ConfigError

    root, data, _ = pipeline
    common = dict(data=[data], autoencoder=str(root / "ae"), preset="tiny", batch_size=4, window=4,
                  log_every=2, eval_every=2, save_every=100)
    r = train_world_model(WorldModelTrainConfig(out=str(root / "sf"), steps=3, self_forcing=0.5,
                                                self_forcing_steps=2, **common), progress=False)
    assert r["val_loss"] > 0
    manifest = json.loads((root / "sf" / "manifest.json").read_text())
    assert manifest["training"]["self_forcing"] == 0.5
    with pytest.raises(ConfigError, match="--self-forcing"):
        WorldModelTrainConfig(out="x", self_forcing=1.5, **{k: v for k, v in common.items() if k != "out"}).validate()


def test_self_forcing_runs_on_the_models_device():
    """imagine_context on a batch and model on another device than the CPU (meta here, as a GPU
    would be): the imagined context is written in place on that device."""
    from wmpo.models.flow import FlowBatch
    from wmpo.models.video_dit import PRESETS, VideoDiT
    from wmpo.sampling.rollout import SamplerConfig
    from wmpo.train.world_model import imagine_context

    c, b, f = PRESETS["tiny"], 4, 9
    model = VideoDiT(c).eval().to("meta")
    has = torch.ones(b, f, dtype=torch.bool, device="meta")
    batch = FlowBatch(torch.zeros(b, f, c.latent_channels, c.latent_size, c.latent_size, device="meta"),
                      torch.zeros(b, f, c.frame_action_dim, device="meta"), has,
                      torch.arange(f, device="meta").expand(b, f), torch.tensor([2, 3, 6, 8]))
    assert imagine_context(model, batch, 1.0, SamplerConfig(steps=2), torch.Generator().manual_seed(1)) == 3
    assert batch.latents.device.type == "meta"
