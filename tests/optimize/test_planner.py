"""The action optimizer's core on tiny models: optimization lowers the objective and recovers
a known latent's actions; the planner's three moves; the residual IDM; clear errors."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from wmpo.errors import CheckpointError, ConfigError
from wmpo.models.autoencoder import PRESETS as AE_PRESETS
from wmpo.models.autoencoder import FrameAutoencoder
from wmpo.models.inverse_dynamics import InverseDynamics, InverseDynamicsConfig
from wmpo.models.trajectory_vae import PRESETS as VAE_PRESETS
from wmpo.models.trajectory_vae import TrajectoryVAE
from wmpo.models.video_dit import PRESETS, VideoDiT
from wmpo.optimize.planner import Planner, PlannerConfig, PlanRequest
from wmpo.sampling.plan import imagine_plan
from wmpo.sampling.rollout import SamplerConfig
from wmpo.sampling.world_model import TorchWorldModel


def perturbed(model: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def tiny_planner(idm: InverseDynamics | None = None, **cfg) -> Planner:
    torch.manual_seed(0)
    vae = perturbed(TrajectoryVAE(VAE_PRESETS["tiny"]), 0.1, 1)  # 16 actions -> 2 tokens of 8
    dit = perturbed(VideoDiT(PRESETS["tiny"].with_plan(tokens=2, plan_dim=8, plan_frames=8, text_dim=0)), 0.1, 2)
    with torch.no_grad():  # a generator whose future clearly depends on the plan
        for block in dit.blocks:
            block.cross.proj.weight.mul_(20)
    wm = TorchWorldModel(FrameAutoencoder(AE_PRESETS["tiny"]).eval(), dit, SamplerConfig(steps=2))
    return Planner(wm, vae, idm, PlannerConfig(**{"sampler_steps": 2, "target_steps": 2, **cfg}),
                   {"generator_sha256": "test"})


def frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def test_optimization_recovers_a_known_latent():
    planner = tiny_planner(lr=0.05, l2=0.0)
    req = PlanRequest(frames(1, 0)[0], "push the puck", seed=3)
    known = torch.randn(2, 8, generator=torch.Generator().manual_seed(9))
    # The target: the generator's own future under the known latent, same noise seed.
    [p] = planner.prepare([req])
    with torch.no_grad():
        p.target = imagine_plan(planner.generator.dit, p.start[None], known[None], torch.ones(1, dtype=torch.bool),
                                None, [p.seed], SamplerConfig(steps=2), 2, 4)[0]
    before = float((planner.vae.decode(p.z[None]) - planner.vae.decode(known[None])).abs().mean())
    for _ in range(60):
        planner.step([p])
    after = float((planner.vae.decode(p.z[None]) - planner.vae.decode(known[None])).abs().mean())
    assert p.trace[-1] < 0.2 * p.trace[0]  # the objective falls ...
    assert after < 0.5 * before  # ... and the decoded actions move to the known ones


def test_activation_checkpointing_changes_nothing_but_cost():
    """Recomputing each AR step in the backward pass (the memory-saving option) gives the same
    latents, objective trace and actions as storing the activations (the default)."""
    req = PlanRequest(frames(1, 0)[0], "push the puck", seed=3)
    out = []
    for ck in (False, True):
        planner = tiny_planner(checkpoint=ck, steps=4)
        [r] = planner.plan([req])
        out.append(r)
    assert out[0].objective == out[1].objective
    assert np.array_equal(out[0].latent, out[1].latent) and np.array_equal(out[0].actions, out[1].actions)


def test_a_plan_from_given_actions_takes_the_smaller_step():
    """+ActionInit refines the guess (init_lr); a random latent must travel (lr)."""
    planner = tiny_planner(lr=0.1, init_lr=0.01)
    guess = np.zeros((planner.horizon, 4), np.float32)
    fresh, guided = planner.prepare([PlanRequest(frames(1, 0)[0], "push the puck", seed=3),
                                     PlanRequest(frames(1, 0)[0], "push the puck", init_actions=guess, seed=3)])
    assert (fresh.lr, guided.lr) == (0.1, 0.01)
    planner.initialize(fresh, guess)  # a guess chosen after seeing the target
    assert fresh.lr == 0.01
    planner.step([fresh])
    moved = float((fresh.z - planner.vae.encode(torch.as_tensor(guess)[None])[0][0]).abs().max())
    assert 0 < moved <= 0.01 + 1e-6  # Adam's first step moves each coordinate by at most lr


@pytest.mark.parametrize("through_world_model", [False, True])
def test_an_anchored_plan_starts_at_exactly_the_given_actions(through_world_model):
    """anchor: the guess's VAE round trip is corrected, so 0 steps return the guess itself (the
    plain +ActionInit returns its round trip), and the optimization still moves the actions."""
    guess = np.random.default_rng(0).uniform(-0.8, 0.8, (16, 4)).astype(np.float32)
    req = PlanRequest(frames(1, 0)[0], "push the puck", target_frames=frames(8, 1), init_actions=guess, seed=4)
    plans = {}
    for anchor in (False, True):
        planner = tiny_planner(anchor=anchor, init_lr=0.1)
        if through_world_model:  # the same VAE and autoencoder, actions driving an action-conditioned DiT
            torch.manual_seed(5)
            wm = TorchWorldModel(planner.generator.ae, perturbed(VideoDiT(PRESETS["tiny"]), 0.1, 6),
                                 SamplerConfig(steps=2))
            planner = Planner(planner.generator, planner.vae, None, planner.config, {}, wm)
        plans[anchor] = [planner.plan([replace(req, steps=n)])[0] for n in (0, 3)]
    round_trip = plans[False][0].prior_actions
    assert np.abs(round_trip - guess).max() > 0.05  # the VAE does not reproduce the guess
    assert np.allclose(plans[True][0].actions, guess, atol=1e-5)
    # the anchor shifts every decoding by the same offset: the steps move both plans alike
    moved = plans[True][1].prior_actions - plans[True][0].prior_actions
    assert np.abs(moved).max() > 1e-3
    if not through_world_model:  # the optimization itself does not see the offset on this route
        assert np.allclose(plans[True][1].latent, plans[False][1].latent, atol=1e-6)


def test_optimization_through_a_world_model_recovers_known_actions():
    """The other route: z -> the VAE's actions -> an action-conditioned world model that shares
    the generator's autoencoder; the target is that model's future under a known latent."""
    base = tiny_planner()
    dit = perturbed(VideoDiT(PRESETS["tiny"]), 0.1, 5)
    with torch.no_grad():  # a world model whose future clearly depends on its actions
        dit.action_mlp[-1].weight.mul_(20)
    wm = TorchWorldModel(base.generator.ae, dit, SamplerConfig(steps=2))
    planner = Planner(base.generator, base.vae, None, PlannerConfig(sampler_steps=2, target_steps=2, lr=0.05, l2=0.0),
                      {"generator_sha256": "test"}, world_model=wm)
    assert planner.provenance()["optimized_through"] == "world model actions"
    req = PlanRequest(frames(1, 0)[0], "push the puck", seed=3)
    known = torch.randn(2, 8, generator=torch.Generator().manual_seed(9))
    [p] = planner.prepare([req])
    with torch.no_grad():
        p.target = planner.imagine(known[None], [p])[0]
    before = float((planner.vae.decode(p.z[None]) - planner.vae.decode(known[None])).abs().mean())
    for _ in range(60):
        planner.step([p])
    after = float((planner.vae.decode(p.z[None]) - planner.vae.decode(known[None])).abs().mean())
    assert p.trace[-1] < 0.2 * p.trace[0]
    assert after < 0.5 * before
    [r] = planner.finish([p])
    assert r.frames.shape == (8, 64, 64, 3) and r.actions.shape == (16, 4)
    other_ae = TorchWorldModel(perturbed(FrameAutoencoder(AE_PRESETS["tiny"]), 0.1, 6), dit)
    with pytest.raises(CheckpointError, match="share one frame autoencoder"):
        Planner(base.generator, base.vae, world_model=other_ae)


def test_plan_end_to_end_with_targets_goal_images_and_action_init():
    planner = tiny_planner(steps=3)
    reqs = [PlanRequest(frames(1, 1)[0], "open the drawer", seed=1),  # instruction-only target
            PlanRequest(frames(1, 2)[0], "open the drawer", target_frames=frames(8, 3), seed=2),  # a clip
            PlanRequest(frames(1, 4)[0], "open the drawer", target_frames=frames(1, 5), seed=3,  # a goal image
                        init_actions=np.zeros((16, 4), np.float32), steps=5)]
    results = planner.plan(reqs)
    for r, n in zip(results, (3, 3, 5), strict=True):
        assert r.actions.shape == (16, 4) and np.abs(r.actions).max() <= 1
        assert r.frames.shape == (8, 64, 64, 3) and r.frames.dtype == np.uint8
        assert len(r.objective) == n and r.latent.shape == (2, 8)
        assert r.provenance["generator_sha256"] == "test" and r.timing["total_s"] > 0
    # The same request again, alone, gives the same plan (seeded noise and initialization; only
    # float rounding differs between a batch of 3 and a batch of 1).
    again = planner.plan(reqs[:1])[0]
    assert np.allclose(again.actions, results[0].actions, atol=1e-5)
    # steps=0 decodes the initial latent: no optimization step, not the planner's default.
    [zero] = planner.plan([replace(reqs[2], steps=0)])
    assert zero.objective == [] and np.allclose(zero.latent, planner.prepare([reqs[2]])[0].z.numpy())


def test_residual_idm_corrects_the_prior_and_starts_as_identity():
    idm = InverseDynamics(InverseDynamicsConfig(latent_size=8, action_dim=8, width=4, stages=1, hidden=16,
                                                prior_dim=8)).eval()
    planner = tiny_planner(idm=idm, steps=2)
    [r] = planner.plan([PlanRequest(frames(1, 1)[0], "press the button", seed=1)])
    assert np.allclose(r.actions, r.prior_actions)  # zero-initialized correction: the prior itself
    perturbed(idm, 0.05, 4)
    [r2] = planner.plan([PlanRequest(frames(1, 1)[0], "press the button", seed=1)])
    assert not np.allclose(r2.actions, r2.prior_actions)


def test_bad_requests_and_mismatched_models_are_clear_errors():
    planner = tiny_planner()
    good = frames(1, 0)[0]
    for req, match in [
        (PlanRequest(good[:32], "x"), "frames must be"),
        (PlanRequest(good, "  "), "instruction"),
        (PlanRequest(good, "x", target_frames=frames(9, 1)), "target_frames"),
        (PlanRequest(good, "x", init_actions=np.zeros((8, 4))), "init_actions must be"),
        (PlanRequest(good, "x", init_actions=np.full((16, 4), np.nan)), "NaN"),
        (PlanRequest(good, "x", steps=-1), "steps must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            planner.prepare([req])
    with pytest.raises(ConfigError, match="lr"):
        PlannerConfig(lr=0)
    wm = TorchWorldModel(FrameAutoencoder(AE_PRESETS["tiny"]).eval(), VideoDiT(PRESETS["tiny"]))
    with pytest.raises(CheckpointError, match="no plan conditioning"):
        Planner(wm, TrajectoryVAE(VAE_PRESETS["tiny"]))


def test_closed_loop_in_metaworld_plans_executes_and_replans(tmp_path):
    """The optimizer as an action source in the real simulator: a short episode on tiny models
    (random weights, so no success is expected) runs its plans and records them."""
    from wmpo.data.collect import SourceSpec
    from wmpo.eval.policy import EvalConfig, evaluate
    from wmpo.utils.checkpoint import save_checkpoint

    planner = tiny_planner()
    # The tiny planner's 8x8 latents come from 64x64 frames through a 3-stage autoencoder.
    planner.generator.save(tmp_path / "gen", {"kind": "world-model"})
    vae = planner.vae
    save_checkpoint(tmp_path / "vae", {k: v.half() for k, v in vae.state_dict().items()}, vae.checkpoint_config(),
                    {"kind": "trajectory-vae"})
    spec = SourceSpec("optimizer", optimizer={"generator": str(tmp_path / "gen"), "vae": str(tmp_path / "vae"),
                                              "idm": None, "variant": "full", "steps": 2, "execute_chunks": 1})
    r = evaluate(EvalConfig(tasks=["button-press-topdown-v3"], source=spec, episodes=1, workers=1, max_steps=24),
                 progress=False)
    [ep] = r["episodes_detail"]
    assert ep["length"] == 24 and ep["plans"] == 3 and len(ep["plan_seconds"]) == 3  # re-planned every chunk
    with pytest.raises(ConfigError, match="needs a policy"):
        SourceSpec("optimizer", optimizer={"generator": str(tmp_path / "gen"), "vae": str(tmp_path / "vae"),
                                           "idm": None, "variant": "act-head"}).build()
