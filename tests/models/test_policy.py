import itertools
import json

import numpy as np
import pytest
import torch

from wmpo.errors import CheckpointError, ConfigError
from wmpo.models.policy import PRESETS, Policy, PolicyConfig, chunk_log_prob
from wmpo.utils.checkpoint import save_checkpoint


def tiny_policy(**kw) -> Policy:
    cfg = PolicyConfig(image_size=16, channels=(4, 4), hidden=8, token_dim=4, **kw)
    torch.manual_seed(0)
    p = Policy(cfg)
    p.set_instructions(["a", "b"], np.random.default_rng(0).normal(size=(2, 384)).astype(np.float32))
    # Make the head non-trivial so probabilities are far from uniform.
    with torch.no_grad():
        for prm in p.parameters():
            prm.add_(torch.randn_like(prm) * 0.5)
    return p.eval()


def test_chunk_log_prob_equals_brute_force_joint():
    p = tiny_policy(chunk=2, action_dim=2, bins=3)
    images = torch.randint(0, 255, (2, 16, 16, 3), dtype=torch.uint8)
    text = p.embed(["a", "b"])
    logits = p(images, text).double()
    total = torch.zeros(2, dtype=torch.float64)
    for combo in itertools.product(range(3), repeat=4):  # every chunk: 2 steps x 2 dims
        tokens = torch.tensor(combo).view(1, 2, 2).expand(2, 2, 2)
        lp = p.log_prob(images, text, tokens).double()
        # Brute force: product of the explicitly normalized per-token probabilities.
        prob = torch.ones(2, dtype=torch.float64)
        for k, d in itertools.product(range(2), range(2)):
            z = logits[:, k, d].exp()
            prob = prob * z[:, combo[k * 2 + d]] / z.sum(-1)
        assert torch.allclose(lp.exp(), prob, atol=1e-6)
        total += prob
    assert torch.allclose(total, torch.ones(2, dtype=torch.float64))  # a proper distribution


def test_sampling_at_low_temperature_is_greedy():
    p = tiny_policy()
    images = torch.randint(0, 255, (4, 16, 16, 3), dtype=torch.uint8)
    text = p.embed(["a", "b", "a", "b"])
    greedy, _ = p.sample_tokens(images, text, temperature=0.0)
    cold, _ = p.sample_tokens(images, text, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, cold)
    hot1, lp1 = p.sample_tokens(images, text, 1.6, torch.Generator().manual_seed(1))
    hot2, lp2 = p.sample_tokens(images, text, 1.6, torch.Generator().manual_seed(1))
    assert torch.equal(hot1, hot2) and torch.equal(lp1, lp2)
    assert not torch.equal(hot1, greedy)
    # Returned log-probs are those of the temperature-1 policy, as GRPO's ratio needs.
    assert torch.allclose(lp1, p.log_prob(images, text, hot1))


def test_tokenizer_round_trip_within_half_a_bin():
    p = tiny_policy(bins=256)
    acts = np.random.default_rng(0).uniform(-1, 1, (1000, 4)).astype(np.float32)
    p.tokenizer.fit(acts)
    t = torch.from_numpy(acts[:100])
    back = p.tokenizer.decode(p.tokenizer.encode(t))
    width = (p.tokenizer.q99 - p.tokenizer.q01) / 256
    inside = (t >= p.tokenizer.q01) & (t <= p.tokenizer.q99)
    assert torch.all((back - t).abs()[inside] <= (width / 2 + 1e-6).expand_as(t)[inside])


def test_act_returns_chunks_in_action_range():
    p = tiny_policy()
    frames = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    acts = p.act(frames, ["a", "b", "a"])
    assert acts.shape == (3, 8, 4) and acts.dtype == np.float32 and np.all(np.abs(acts) <= 1)


def test_wrong_image_shape_is_a_clear_error():
    p = tiny_policy()
    with pytest.raises(ValueError, match=r"images must be \(B, 16, 16, 3\)"):
        p(torch.zeros(1, 32, 32, 3, dtype=torch.uint8), p.embed(["a"]))


def test_checkpoint_round_trip_and_errors(tmp_path):
    p = tiny_policy()
    save_checkpoint(tmp_path / "ck", p.state_dict(), p.checkpoint_config(), {"note": "test"})
    q, manifest = Policy.from_checkpoint(str(tmp_path / "ck"))
    assert manifest["note"] == "test" and len(manifest["weights_sha256"]) == 64
    images = torch.randint(0, 255, (2, 16, 16, 3), dtype=torch.uint8)
    assert torch.equal(p(images, p.embed(["a", "b"])), q(images, q.embed(["a", "b"])))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Policy.from_checkpoint(str(tmp_path / "missing"))
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        Policy.from_checkpoint(str(tmp_path / "ck"))
    save_checkpoint(tmp_path / "ck2", p.state_dict(), {"kind": "world-model"}, {})
    with pytest.raises(CheckpointError, match="not a policy"):
        Policy.from_checkpoint(str(tmp_path / "ck2"))
    cfg = p.checkpoint_config()
    cfg["model"]["hidden"] = 16
    save_checkpoint(tmp_path / "ck3", p.state_dict(), json.loads(json.dumps(cfg)), {})
    with pytest.raises(CheckpointError, match="does not match"):
        Policy.from_checkpoint(str(tmp_path / "ck3"))


def test_config_validation_names_the_bad_value():
    with pytest.raises(ConfigError, match="bins"):
        PolicyConfig(bins=1)
    with pytest.raises(ConfigError, match="image_size"):
        PolicyConfig(image_size=60)


def test_log_prob_is_differentiable_and_batched():
    p = Policy(PRESETS["tiny"]).eval()  # eval: no dropout, so rows are independent
    p.set_instructions(["a"], np.zeros((1, 384), np.float32))
    images = torch.randint(0, 255, (5, 64, 64, 3), dtype=torch.uint8)
    tokens = torch.randint(0, 256, (5, 8, 4))
    lp = p.log_prob(images, p.embed(["a"] * 5), tokens)
    assert lp.shape == (5,)
    lp.sum().backward()
    assert p.token_head.weight.grad is not None
    single = chunk_log_prob(p(images[:1], p.embed(["a"])), tokens[:1])
    assert torch.allclose(single, lp[:1], atol=1e-5)
