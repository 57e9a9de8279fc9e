"""The action optimizer: from a start frame, an instruction and a target future to actions.

``Planner`` holds the three frozen models of MVISTA-4D's inference (section 4.4):

- the plan generator (a world model fine-tuned with plan conditioning, ``wmpo train world-model
  --trajectory-vae``) and its frame autoencoder;
- the trajectory VAE that decodes an optimized latent into a horizon of action chunks;
- optionally the residual inverse-dynamics model that corrects the decoded actions from the
  imagined frames (``wmpo train inverse-dynamics``);
- optionally an action-conditioned world model to optimize through instead of the generator's
  plan tokens: the latent is decoded by the VAE into actions that drive it frame by frame (the
  generator then only supplies the instruction-only target future). Our plan generator reads
  its plan tokens weakly (results/plan-generator), while the world model follows actions.

A plan runs in three moves, so that a serving engine can batch the middle one across plans
that arrive at different times:

1. ``prepare``: encode the start frames; the target future is the caller's frames (a clip of
   latent frames, or one goal image compared with the plan's last frame) or, without them,
   the instruction-only future imagined from the null plan (MVISTA-4D's plan-from-text mode);
   the latent starts from the caller's actions encoded by the VAE (+ActionInit, e.g. the
   policy's chunks) or from a seeded draw of the VAE's prior;
2. ``step``: one Adam step of every plan's latent, one batched forward + backward
   (``wmpo.optimize.latent``);
3. ``finish``: decode the latents into actions, imagine the future under them, and, with an
   inverse-dynamics model, replace each transition's prior actions by prior + correction.

``plan`` runs the three for a list of requests in one process (evaluation, tests, CLI).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmpo.errors import CheckpointError, ConfigError
from wmpo.models.inverse_dynamics import InverseDynamics
from wmpo.models.trajectory_vae import TrajectoryVAE
from wmpo.optimize.latent import PlanProblem, decoded_actions, optimization_step, plan_future
from wmpo.sampling.plan import imagine_plan
from wmpo.sampling.world_model import TorchWorldModel, check_frames
from wmpo.utils.checkpoint import checkpoint_sha
from wmpo.utils.config import bounded, check_bounds

# The instruction-only target's noise is drawn from the plan's seed + this: not the optimization's noise.
TARGET_SEED_OFFSET = 7919


@dataclass
class PlannerConfig:
    steps: int = bounded(100, ge=1, le=1000, doc="optimization steps per plan (MVISTA-4D: 100 from a random "
                         "latent, 10-15 from an action-head guess)")
    lr: float = bounded(0.1, gt=0.0, le=10.0, doc="Adam learning rate on a trajectory latent drawn at random")
    # From a given guess (+ActionInit: the policy's chunks) the optimization must refine the guess,
    # not leave it: at 0.1, 15 steps walked the policy's chunks away from success (closed loop,
    # button + drawer, first 10 layouts each: 4/20 at 0.1, 18/20 at 0.01, the policy 17/20; on 5
    # tasks x 30 layouts 8.7% -> 38.0%; results/optimizer-closed-loop/).
    init_lr: float = bounded(0.01, gt=0.0, le=10.0, doc="Adam learning rate on a latent that starts "
                             "from given actions (+ActionInit)")
    l2: float = bounded(1e-3, ge=0.0, le=10.0, doc="lambda: weight of ||z||^2 (pulls toward the VAE's prior)")
    sampler_steps: int = bounded(4, ge=1, le=64, doc="denoising steps of the generator inside the optimization")
    target_steps: int = bounded(8, ge=1, le=64, doc="denoising steps of the instruction-only target future")
    init_scale: float = bounded(1.0, ge=0.0, le=10.0, doc="std of a random initial latent (the VAE's prior: 1)")
    # A plan from given actions decodes to exactly them before its first step: the guess's VAE
    # reconstruction error (val RMSE ~0.12 per action coordinate for the bundled VAE) is added
    # back to every decoding, so the optimization moves from the guess rather than from its
    # round trip. Off: MVISTA-4D's +ActionInit, which starts from the round trip.
    anchor: bool = False
    # Recompute each AR step in the backward pass instead of storing its activations: memory for
    # compute, for large batches of plans on a GPU. Off by default: the results are identical
    # and a step is 1.8x faster without it (one plan, one CPU thread: 0.39 vs 0.70 s).
    checkpoint: bool = False
    # Which frames the inverse-dynamics model reads: "plan" (the future imagined under the
    # optimized latent: the method) or "target" (the target future itself: the full-IDM baseline,
    # which needs no latent at all).
    idm_input: str = bounded("plan", choices=("plan", "target"), doc="frames the inverse-dynamics model reads")

    def __post_init__(self) -> None:
        if problems := check_bounds(self):
            raise ConfigError("invalid planner config: " + "; ".join(problems))


@dataclass
class PlanRequest:
    frame: np.ndarray  # (H, W, 3) uint8: the current camera frame
    instruction: str
    target_frames: np.ndarray | None = None  # (n, H, W, 3) uint8 at the model's frame rate; n=1: goal image
    init_actions: np.ndarray | None = None  # (T, 4) in [-1, 1]: the +ActionInit guess (e.g. the policy's)
    steps: int | None = None  # default: the planner's
    seed: int = 0


@dataclass
class PlanResult:
    actions: np.ndarray  # (T, 4) executable actions (after the residual IDM when there is one)
    prior_actions: np.ndarray  # (T, 4) the VAE's decoding of the optimized latent
    frames: np.ndarray  # (P, H, W, 3) the imagined future under the optimized latent
    target_frames: np.ndarray  # (P, H, W, 3) the target it was optimized toward (decoded latents)
    objective: list[float]  # per optimization step, before its update
    distance: list[float]
    latent: np.ndarray  # (S, Z) z*
    timing: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


class Planner:
    def __init__(self, generator: TorchWorldModel, vae: TrajectoryVAE, idm: InverseDynamics | None = None,
                 config: PlannerConfig | None = None, hashes: dict[str, str] | None = None,
                 world_model: TorchWorldModel | None = None) -> None:
        c = generator.dit.config
        v = vae.cfg
        if not c.has_plan:
            raise CheckpointError("the generator has no plan conditioning; train one with "
                                  "`wmpo train world-model --trajectory-vae ...`")
        if (c.plan_tokens, c.plan_dim) != (v.tokens, v.latent_dim) or v.steps != c.plan_frames * c.frame_stride:
            raise CheckpointError(f"the generator's plan ({c.plan_tokens} tokens of {c.plan_dim}, {c.plan_frames} "
                                  f"frames) does not fit the trajectory VAE ({v.tokens} tokens of {v.latent_dim}, "
                                  f"{v.steps} actions)")
        if v.chunk_length % c.frame_stride:
            raise CheckpointError(f"VAE chunks of {v.chunk_length} actions do not fit frame stride {c.frame_stride}")
        if idm is not None and idm.cfg.action_dim != c.frame_action_dim:
            raise CheckpointError(f"the inverse-dynamics model predicts {idm.cfg.action_dim} numbers per "
                                  f"transition, the generator's frames carry {c.frame_action_dim}")
        if world_model is not None:
            w = world_model.dit.config
            if (w.action_dim, w.frame_stride, w.latent_channels) != (c.action_dim, c.frame_stride, c.latent_channels):
                raise CheckpointError("the world model's actions, frame stride or latents differ from the generator's")
            if not _same_weights(world_model.ae, generator.ae):
                raise CheckpointError("the world model and the generator must share one frame autoencoder "
                                      "(the target future and the optimized future are compared as latents)")
        self.generator, self.vae, self.idm = generator, vae.eval(), idm.eval() if idm is not None else None
        self.world_model = world_model
        extra = [world_model.dit] if world_model is not None else []
        for module in (generator.ae, generator.dit, self.vae, *([self.idm] if self.idm else []), *extra):
            module.requires_grad_(False)
        self.config = config or PlannerConfig()
        self.hashes = hashes or {}
        self.chunks = v.chunks
        self.chunk_frames = v.chunk_length // c.frame_stride
        self.plan_frames = self.chunks * self.chunk_frames
        self._text: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, generator: str | Path, vae: str | Path, idm: str | Path | None = None,
             config: PlannerConfig | None = None, world_model: str | Path | None = None) -> Planner:
        wm = TorchWorldModel.load(generator)
        v, vae_sha = TrajectoryVAE.load(vae)
        manifest = Path(generator) / "manifest.json"  # the manifest only: the weights are loaded once, above
        want = ((json.loads(manifest.read_text()) if manifest.exists() else {}).get("trajectory_vae_sha256") or "")[:12]
        if want and want != vae_sha:
            raise CheckpointError(f"the generator {generator} was trained on trajectory VAE {want}, not {vae} ({vae_sha})")
        model = InverseDynamics.load(idm) if idm else None
        hashes = {"generator_sha256": wm.hashes.get("world_model_sha256", ""), "trajectory_vae_sha256": vae_sha}
        if idm:
            hashes["inverse_dynamics_sha256"] = checkpoint_sha(idm)
        through = TorchWorldModel.load(world_model) if world_model else None
        if through is not None:
            hashes["world_model_sha256"] = through.hashes.get("world_model_sha256", "")
        return cls(wm, v, model, config, hashes, through)

    @property
    def image_size(self) -> int:
        return self.generator.image_size

    @property
    def horizon(self) -> int:
        """Actions per plan (T = chunks x chunk length)."""
        return self.vae.cfg.steps

    # ------------------------------------------------------------------ helpers
    def text(self, instructions: list[str]) -> torch.Tensor | None:
        if not self.generator.dit.config.text_dim:
            return None
        missing = sorted({s for s in instructions if s not in self._text})
        if missing:
            from wmpo.models.text import embed_instructions

            for s, e in zip(missing, embed_instructions(missing), strict=True):
                self._text[s] = torch.from_numpy(e)
        return torch.stack([self._text[s] for s in instructions])

    def check(self, req: PlanRequest) -> None:
        """ValueError naming what is wrong with a request (the services map it to a 4xx)."""
        check_frames(np.asarray(req.frame)[None], self.image_size)
        if not isinstance(req.instruction, str) or not req.instruction.strip():
            raise ValueError("instruction must be a non-empty string")
        if req.target_frames is not None:
            t = check_frames(req.target_frames, self.image_size)
            if not (len(t) == 1 or len(t) <= self.plan_frames):
                raise ValueError(f"target_frames: 1 (a goal image) to {self.plan_frames} frames, got {len(t)}")
        if req.init_actions is not None:
            a = np.asarray(req.init_actions, dtype=np.float32)
            if a.shape != (self.horizon, 4):
                raise ValueError(f"init_actions must be ({self.horizon}, 4), got {a.shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError("init_actions contain NaN or inf")
        if req.steps is not None and not 0 <= req.steps <= 1000:
            raise ValueError(f"steps must be in [0, 1000] (0: decode the initial latent), got {req.steps}")

    # ------------------------------------------------------------------ the three moves
    @torch.no_grad()
    def prepare(self, requests: list[PlanRequest]) -> list[PlanProblem]:
        for r in requests:
            self.check(r)
        cfg = self.config
        wm = self.generator
        start = wm.encode(np.stack([r.frame for r in requests]))  # (B, C, h, w)
        text = self.text([r.instruction for r in requests])
        targets: list[torch.Tensor | None] = [None] * len(requests)
        weights: list[torch.Tensor] = []
        for i, r in enumerate(requests):
            w = torch.zeros(self.plan_frames)
            if r.target_frames is None:
                w[:] = 1
            else:
                z = wm.encode(np.asarray(r.target_frames))
                full = torch.zeros(self.plan_frames, *z.shape[1:])
                if len(z) == 1:  # a goal image: where the plan should end
                    full[-1], w[-1] = z[0], 1
                else:  # a clip: the plan's first n frames
                    full[: len(z)], w[: len(z)] = z, 1
                targets[i] = full
            weights.append(w)
        need = [i for i, t in enumerate(targets) if t is None]
        if need:  # the instruction-only future, from the null plan (one batched generation)
            c = wm.dit.config
            nulls = torch.zeros(len(need), c.plan_tokens, c.plan_dim)
            future = imagine_plan(wm.dit, start[need], nulls, torch.zeros(len(need), dtype=torch.bool),
                                  text[need] if text is not None else None,
                                  [requests[i].seed + TARGET_SEED_OFFSET for i in need],
                                  replace(wm.sampler, steps=cfg.target_steps), self.chunks, self.chunk_frames)
            for j, i in enumerate(need):
                targets[i] = future[j]
        problems = []
        for i, r in enumerate(requests):
            g = torch.Generator().manual_seed(int(r.seed))
            z0 = torch.randn(self.vae.cfg.tokens, self.vae.cfg.latent_dim, generator=g) * cfg.init_scale
            problem = PlanProblem(start[i], text[i] if text is not None else None, targets[i], weights[i],
                                  z0, int(r.seed), cfg.lr, cfg.l2)
            if r.init_actions is not None:
                self.initialize(problem, r.init_actions)
            problems.append(problem)
        return problems

    @torch.no_grad()
    def initialize(self, problem: PlanProblem, actions: np.ndarray) -> None:
        """Restart a prepared plan from actions (T, 4) encoded by the VAE (+ActionInit when they
        come from a policy): for callers that choose the guess after seeing the target."""
        a = np.asarray(actions, np.float32)
        if a.shape != (self.horizon, 4) or not np.all(np.isfinite(a)):
            raise ValueError(f"init actions must be finite ({self.horizon}, 4), got {a.shape}")
        guess = torch.as_tensor(np.clip(a, -1, 1))
        problem.z = self.vae.encode(guess[None])[0][0]
        problem.offset = guess - self.decode_actions(problem.z[None])[0] if self.config.anchor else None
        problem.lr = self.config.init_lr
        problem.m = problem.v = None
        problem.steps_done = 0
        problem.trace.clear()
        problem.distance.clear()

    def decode_actions(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, S, Z) -> the VAE's actions (B, T, 4)."""
        return self.vae.decode(z).flatten(1, 2)

    def route(self) -> tuple[Any, Any, Any]:
        """What the latent is optimized through: (DiT, sampler, decode): the world model driven by
        the decoded actions when there is one, else the generator's plan tokens (decode None)."""
        if self.world_model is not None:
            return (self.world_model.dit, replace(self.world_model.sampler, steps=self.config.sampler_steps),
                    self.decode_actions)
        return self.generator.dit, replace(self.generator.sampler, steps=self.config.sampler_steps), None

    def imagine(self, z: torch.Tensor, problems: list[PlanProblem]) -> torch.Tensor:
        """The future (B, P, C, h, w) under latents z (B, S, Z) along the route, no gradients."""
        dit, sampler, decode = self.route()
        return plan_future(dit, problems, z, sampler, self.chunks, self.chunk_frames, decode=decode)

    def step(self, problems: list[PlanProblem]) -> None:
        dit, sampler, decode = self.route()
        optimization_step(dit, problems, sampler, self.chunks, self.chunk_frames, self.config.checkpoint,
                          decode=decode)

    @torch.no_grad()
    def finish(self, problems: list[PlanProblem]) -> list[PlanResult]:
        wm = self.generator
        z = torch.stack([p.z for p in problems])
        prior = decoded_actions(self.decode_actions, problems, z)  # (B, T, 4)
        start = torch.stack([p.start for p in problems])
        future = self.imagine(z, problems)  # (B, P, C, h, w)
        actions = prior
        if self.idm is not None:  # inverse dynamics on each imagined (or target) transition
            seen = future if self.config.idm_input == "plan" else torch.stack([p.target for p in problems])
            b, p = seen.shape[:2]
            k = self.idm.cfg.context
            seq = torch.cat([start[:, None].expand(b, k, *start.shape[1:]), seen], 1)  # (B, k+P, C, h, w)
            prev = torch.stack([seq[:, j:j + k] for j in range(p)], 1).flatten(0, 1)  # (B*P, k, C, h, w)
            per = prior.reshape(b * p, -1)  # (B*P, stride*4): the actions leading into each frame
            actions = self.idm(prev, seen.flatten(0, 1), per if self.idm.cfg.residual else None).reshape_as(prior)
        frames = wm.decode(future)
        target = wm.decode(torch.stack([p.target for p in problems]))
        return [PlanResult(actions[i].numpy(), prior[i].numpy(), frames[i], target[i], p.trace, p.distance,
                           p.z.numpy(), provenance=self.provenance()) for i, p in enumerate(problems)]

    def plan(self, requests: list[PlanRequest]) -> list[PlanResult]:
        """Prepare, optimize every plan for its steps (batched while several are running), finish."""
        t0 = time.perf_counter()
        problems = self.prepare(requests)
        t1 = time.perf_counter()
        budget = [self.config.steps if r.steps is None else r.steps for r in requests]  # 0: the initial latent
        while active := [p for p, n in zip(problems, budget, strict=True) if p.steps_done < n]:
            self.step(active)
        t2 = time.perf_counter()
        results = self.finish(problems)
        t3 = time.perf_counter()
        for r in results:
            r.timing = {"prepare_s": t1 - t0, "optimize_s": t2 - t1, "finish_s": t3 - t2, "total_s": t3 - t0}
        return results

    def provenance(self) -> dict[str, Any]:
        through = "world model actions" if self.world_model is not None else "generator plan tokens"
        return {**self.hashes, "planner": asdict(self.config), "residual_idm": self.idm is not None,
                "optimized_through": through}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
