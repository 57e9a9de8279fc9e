import numpy as np
import pytest
import torch

from wmpo.errors import ConfigError
from wmpo.models.autoencoder import PRESETS as AE_PRESETS
from wmpo.models.autoencoder import FrameAutoencoder
from wmpo.models.video_dit import PRESETS, VideoDiT
from wmpo.sampling.rollout import SamplerConfig
from wmpo.sampling.schedule import flow_timesteps
from wmpo.sampling.world_model import TorchWorldModel


@pytest.fixture(scope="module")
def wm():
    torch.manual_seed(0)
    ae = FrameAutoencoder(AE_PRESETS["tiny"]).eval()
    dit = VideoDiT(PRESETS["tiny"])
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return TorchWorldModel(ae, dit.eval(), SamplerConfig(steps=3))


def frames(n=1, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)


def actions(b=1, k=8, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (b, k, 4)).astype(np.float32)


def run(wm, seed, acts, chunks=3):
    r = wm.start(frames(), [seed])
    return torch.cat([wm.step(r, acts) for _ in range(chunks)], 1)


def test_same_seed_same_rollout_new_seed_new_noise(wm):
    a = actions()
    x, y, z = run(wm, 5, a), run(wm, 5, a), run(wm, 6, a)
    assert x.shape == (1, 12, 4, 8, 8)
    assert torch.equal(x, y)
    assert not torch.allclose(x, z)


def test_forked_group_shares_its_encoded_start(wm):
    root = wm.start(frames(), [0])[0]
    group = wm.fork(root, list(range(8)))
    assert all(g.anchor.data_ptr() == root.anchor.data_ptr() for g in group)
    out = wm.step(group, np.repeat(actions(), 8, 0))
    assert not torch.allclose(out[0], out[1])  # same actions, different noise
    # A forked rollout with seed s equals a fresh rollout with seed s.
    fresh = wm.step(wm.start(frames(), [3]), actions())
    assert torch.allclose(out[3], fresh[0], atol=1e-5)


def test_cached_and_uncached_rollouts_agree(wm):
    a = actions(2)
    cached = wm.step(wm.start(frames(2), [1, 2]), a)
    wm.sampler.use_cache = False
    try:
        uncached = wm.step(wm.start(frames(2), [1, 2]), a)
    finally:
        wm.sampler.use_cache = True
    assert torch.allclose(cached, uncached, atol=1e-4)


def test_anchor_noise_schedule():
    cfg = SamplerConfig()
    assert [cfg.anchor_noise(s) for s in (0, 3, 4, 13, 40)] == pytest.approx([0, 0, 0.01, 0.1, 0.3])


def test_timesteps_run_from_noise_to_data():
    t = flow_timesteps(4, shift=3.0)
    assert t[0] == 1 and t[-1] == 0 and torch.all(t[1:] < t[:-1])


def test_decode_gives_frames(wm):
    r = wm.start(frames(), [0])
    out = wm.decode(wm.step(r, actions()))
    assert out.shape == (1, 4, 64, 64, 3) and out.dtype == np.uint8


def test_bad_inputs_are_clear_errors(wm):
    r = wm.start(frames(), [0])
    with pytest.raises(ValueError, match="multiple of the model's frame stride"):
        wm.step(r, actions(k=7))
    with pytest.raises(ValueError, match=r"\(B=1, K, 4\)"):
        wm.step(r, actions(b=2))
    bad = actions()
    bad[0, 2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        wm.step(r, bad)
    with pytest.raises(ValueError, match="uint8"):
        wm.start(frames().astype(np.float32), [0])
    with pytest.raises(ValueError, match=r"\(B, 64, 64, 3\)"):
        wm.start(np.zeros((1, 32, 32, 3), np.uint8), [0])


def test_save_and_load_round_trip(wm, tmp_path):
    wm.save(tmp_path / "wm", {"note": "test"}, dtype=torch.float32)
    loaded = TorchWorldModel.load(tmp_path / "wm")
    a = actions()
    assert torch.equal(run(wm, 1, a, 1), run(loaded, 1, a, 1))
    assert len(loaded.provenance()["world_model_sha256"]) == 12
    wm.save(tmp_path / "wm16", {})  # the default: float16 weights, half the size
    half = TorchWorldModel.load(tmp_path / "wm16")
    assert (tmp_path / "wm16" / "model.safetensors").stat().st_size < 0.6 * (
        tmp_path / "wm" / "model.safetensors").stat().st_size
    assert torch.allclose(run(wm, 1, a, 1), run(half, 1, a, 1), atol=0.05)


def test_action_guidance_changes_the_rollout_and_is_reproducible(wm):
    a = actions()
    plain = run(wm, 4, a, 1)
    wm.sampler.action_guidance = 3.0
    try:
        guided, again = run(wm, 4, a, 1), run(wm, 4, a, 1)
    finally:
        wm.sampler.action_guidance = 1.0
    assert torch.equal(guided, again) and not torch.allclose(plain, guided)


def test_sampler_overrides_replace_only_what_is_given_and_refuse_bad_values(wm):
    before = wm.sampler
    try:
        assert wm.with_sampler(action_guidance=2.0) is wm
        assert wm.sampler.action_guidance == 2.0 and wm.sampler.steps == before.steps
        assert wm.with_sampler(steps=3).sampler.steps == 3 and wm.sampler.action_guidance == 2.0
        for bad in ({"steps": 0}, {"action_guidance": -0.5}, {"action_guidance": 10.5}):
            with pytest.raises(ConfigError):
                wm.with_sampler(**bad)
    finally:
        wm.sampler = before


@pytest.mark.parametrize("cached,guidance", [(True, 1.0), (True, 2.0), (False, 1.0)])
def test_the_sampling_loop_runs_on_the_models_device(cached, guidance):
    """Every tensor the loop makes is on the rollouts' (the model's) device, so it runs on a GPU
    (the served torch model, self-forcing in GPU training). Checked on the meta device, which,
    like a GPU, refuses to mix with CPU tensors; the noise comes from the CPU generators."""
    from wmpo.sampling.rollout import start_rollout, step_rollouts

    c = PRESETS["tiny"]
    model = VideoDiT(c).eval().to("meta")
    anchor = torch.zeros(c.latent_channels, c.latent_size, c.latent_size, device="meta")
    rollouts = [start_rollout(anchor, seed, action_width=c.frame_action_dim) for seed in (1, 2)]
    cfg = SamplerConfig(steps=2, use_cache=cached, action_guidance=guidance)
    for _ in range(3):  # past the context window's growth
        out = step_rollouts(model, rollouts, torch.zeros(2, 4, 4), cfg)
        assert out.device.type == "meta" and out.shape == (2, 2, c.latent_channels, c.latent_size, c.latent_size)
    assert {t.device.type for r in rollouts for t in (r.history, r.history_actions, r.history_has_action)} == {"meta"}
