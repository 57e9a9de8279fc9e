"""Action-conditioned latent video DiT with block-causal temporal attention.

The network sees a window of latent frames: a first-frame anchor, recent context frames and
the frames being generated. Every frame carries its own diffusion time ``t`` (context frames
sit at a small noise level, generated frames at the current denoising level) and the actions
that led into it. Conditioning is frame-level AdaLN (DiT's adaLN-Zero): for each frame, the
time embedding and an MLP embedding of the frame's actions are each mapped to
shift/scale/gate for every block, and the two are added. Both maps are zero-initialized, so a
freshly built block is the identity.

Attention is block-causal: tokens of frame i attend to all tokens of frames j <= i. Context
frames never attend to generated ones, so their keys and values do not change while the
generated frames are denoised; ``build_cache`` computes them once per autoregressive step and
``forward_cached`` reuses them at every denoising step (exact, not an approximation).

Plan conditioning (the action optimizer's generator, MVISTA-4D section 4.3; off unless
``plan_tokens > 0``): a trajectory latent of S tokens of width Z (``wmpo.models.trajectory_vae``)
and, when ``text_dim > 0``, the instruction's sentence embedding become a small set of context
tokens that every block reads through cross-attention (after self-attention, before the MLP).
Each trajectory token gets a learned embedding of its index, and each frame's queries a learned
embedding of the frame's position in the plan (0 = at or before the plan's start, then 1..
``plan_frames``), so a frame can find the part of the trajectory that leads into it. A learned
null plan (S tokens) stands for "no trajectory"; with it the model generates the
instruction-only future. The cross-attention output projections start at zero, so a world
model fine-tuned with plan conditioning switched on starts as exactly the world model. The
latent-consistency head (training only) predicts the trajectory tokens from the mean of the
last block's generated-frame tokens. Departures from the paper: frames still carry their
per-frame action inputs, which the plan generator leaves empty (the null action); MVISTA-4D's
generator has none.

Motion conditioning (``motion_conditioning``, off in the bundled model): each generated
frame's action input also carries the commanded displacement since the last context frame,
the running sum of the env actions of the generated frames up to and including it. Without
it a frame sees only its own ``frame_stride`` actions, and where the arm is after a chunk (the
sum of all of the chunk's actions) must be assembled through attention from the other frames'
modulations. Trained as a fine-tune it did not help (``results/world-model-motion/``); action
guidance did (``results/world-model-sampler/``). The generated segment starts at ``gen_start`` (training: the window's split
point; ``forward_cached``: every frame it is given; ``build_cache``: none). Context frames get
a zero displacement.

Shapes: latents (B, F, C, h, w); tokens per frame N = (h/p) * (w/p); sequence L = F * N.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wmpo.errors import ConfigError


@dataclass
class VideoDiTConfig:
    latent_channels: int = 4
    latent_size: int = 16
    patch: int = 4
    dim: int = 160
    depth: int = 6
    heads: int = 5
    mlp_ratio: float = 4.0
    action_dim: int = 4
    frame_stride: int = 2  # env steps per latent frame; each frame is conditioned on this many actions
    max_frames: int = 16  # temporal positions: 0 is the anchor, 1.. the window
    # Plan conditioning (off when plan_tokens == 0): S trajectory tokens of width plan_dim that
    # cover plan_frames latent frames, and an instruction embedding of width text_dim (0: none).
    plan_tokens: int = 0
    plan_dim: int = 32
    plan_frames: int = 16
    text_dim: int = 0
    motion_conditioning: bool = False  # see the module docstring

    def __post_init__(self) -> None:
        problems = []
        if self.latent_size % self.patch:
            problems.append(f"latent_size={self.latent_size} not divisible by patch={self.patch}")
        if self.dim % self.heads:
            problems.append(f"dim={self.dim} not divisible by heads={self.heads}")
        for name in ("latent_channels", "dim", "depth", "heads", "action_dim", "frame_stride", "max_frames",
                     "plan_dim", "plan_frames"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("plan_tokens", "text_dim"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if self.text_dim and not self.plan_tokens:
            problems.append("text_dim > 0 needs plan_tokens > 0 (the instruction is a plan condition)")
        if problems:
            raise ConfigError("invalid VideoDiTConfig: " + "; ".join(problems))

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_size // self.patch) ** 2

    @property
    def frame_action_dim(self) -> int:
        return self.action_dim * self.frame_stride

    @property
    def action_input_dim(self) -> int:
        """Width of the action MLP's input: the frame's actions, then the displacement."""
        return self.frame_action_dim + (self.action_dim if self.motion_conditioning else 0)

    @property
    def has_plan(self) -> bool:
        return self.plan_tokens > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_plan(self, tokens: int, plan_dim: int, plan_frames: int, text_dim: int) -> VideoDiTConfig:
        """This shape with plan conditioning switched on (to fine-tune a world model into the
        optimizer's generator)."""
        return VideoDiTConfig(**{**asdict(self), "plan_tokens": tokens, "plan_dim": plan_dim,
                                 "plan_frames": plan_frames, "text_dim": text_dim})


PRESETS: dict[str, VideoDiTConfig] = {
    "tiny": VideoDiTConfig(latent_channels=4, latent_size=8, patch=2, dim=32, depth=2, heads=2),  # tests
    "small": VideoDiTConfig(),  # bundled CPU model, 3.9M parameters
    # World model v2 (play data, issue 15): patch 2 on the 16x16 latents, so one token covers
    # 8x8 pixels instead of 16x16 (64 tokens per frame, not 16) and a 2-4 px puck is a quarter
    # of a token, not a sixteenth; narrower and deeper than "small" to keep a 1-core training
    # step at about 2.5 s for 16 windows of 9 frames. 3.3M parameters.
    "play": VideoDiTConfig(patch=2, dim=128, depth=8, heads=4),
    # The capacity experiment of issue 15 (trained on a GPU): "play" 1.5x wider, 7.3M parameters,
    # about 2x its CPU sampling cost; 14.6 MB in fp16.
    "play-wide": VideoDiTConfig(patch=2, dim=192, depth=8, heads=6),
    "base": VideoDiTConfig(latent_channels=8, patch=2, dim=768, depth=12, heads=12),  # ~180M
    # Paper-scale shape (Wan2.1-1.3B-like width/depth) over 16x16 latents: same code, GPU-only.
    "xl-1.3b": VideoDiTConfig(latent_channels=8, patch=2, dim=1536, depth=24, heads=12, max_frames=32),
}


# The displacement input is a sum of up to (frames x stride) actions in [-1, 1]; this keeps it in
# the per-step actions' range for windows of a few frames.
MOTION_SCALE = 0.25


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000 as in DiT). (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = (t.float() * 1000.0)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v  # each (B, heads, L, head_dim)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, Lq, hd)
        b, h, n, hd = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, h * hd))


@dataclass
class PlanCondition:
    """What the plan generator is conditioned on, per sample, besides frames and time."""

    tokens: torch.Tensor  # (B, S, Z) trajectory latent (ignored where has_plan is False)
    has_plan: torch.Tensor  # (B,) bool; False: the learned null plan (instruction-only future)
    frame_index: torch.Tensor  # (B, F) long: 0 at/before the plan's start, 1..plan_frames inside
    text: torch.Tensor | None = None  # (B, text_dim) instruction embedding

    def select(self, frames: slice) -> PlanCondition:
        """The same condition for a subset of the window's frames."""
        return PlanCondition(self.tokens, self.has_plan, self.frame_index[:, frames], self.text)


class CrossAttention(nn.Module):
    """Frame tokens (queries) read the plan's context tokens; the output projection starts at
    zero so the block starts as the unconditioned block."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """x (B, L, dim), query_pos (B, L, dim), ctx (B, M, dim) -> x + cross-attention."""
        b, n, d = x.shape
        hd = d // self.heads
        q = self.q(self.norm(x) + query_pos).view(b, n, self.heads, hd).transpose(1, 2)  # (B, h, L, hd)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)  # (B, h, M, hd)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, L, hd)
        return x + self.proj(out.transpose(1, 2).reshape(b, n, d))


def per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Tokens (B, F*N, dim) -> (B, F, N, dim), a view where x is contiguous."""
    return x.reshape(x.shape[0], frames, -1, x.shape[-1])


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, F*N, dim) * (1 + scale) + shift, with per-frame (B, F, 1, dim) shift/scale."""
    return torch.addcmul(shift, per_frame(x, shift.shape[1]), 1 + scale).flatten(1, 2)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate * y over tokens (B, F*N, dim), with a per-frame (B, F, 1, dim) gate."""
    f = gate.shape[1]
    return torch.addcmul(per_frame(x, f), gate, per_frame(y, f)).flatten(1, 2)


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, cross: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.cross = CrossAttention(dim, heads) if cross else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        # adaLN-Zero: time and action embeddings each give shift/scale/gate for attn and MLP.
        self.ada_time = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.ada_action = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def modulation(self, t_emb: torch.Tensor, a_emb: torch.Tensor) -> list[torch.Tensor]:
        """Per-frame (B, F, dim) embeddings -> 6 per-frame (B, F, 1, dim) modulation tensors,
        broadcast over each frame's tokens (repeating them per token cost a fifth of a CPU call)."""
        mod = self.ada_time(t_emb) + self.ada_action(a_emb)  # (B, F, 6*dim)
        return list(mod.unsqueeze(2).chunk(6, dim=-1))

    def pre_attn(self, x: torch.Tensor, mods: list[torch.Tensor]) -> torch.Tensor:
        shift, scale = mods[0], mods[1]
        return modulate(self.norm1(x), shift, scale)

    def post_attn(self, x: torch.Tensor, attn_out: torch.Tensor, mods: list[torch.Tensor],
                  plan: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``plan``: (query positions (B, L, dim), context tokens (B, M, dim)) for the
        cross-attention of a plan-conditioned model."""
        gate_a, shift_m, scale_m, gate_m = mods[2], mods[3], mods[4], mods[5]
        x = gated_residual(x, gate_a, attn_out)
        if self.cross is not None and plan is not None:
            x = self.cross(x, *plan)
        return gated_residual(x, gate_m, self.mlp(modulate(self.norm2(x), shift_m, scale_m)))

    def forward(self, x: torch.Tensor, mods: list[torch.Tensor], mask: torch.Tensor,
                plan: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        q, k, v = self.attn.qkv_heads(self.pre_attn(x, mods))
        return self.post_attn(x, self.attn.attend(q, k, v, mask), mods, plan)


def block_causal_mask(frames_q: int, frames_k: int, n_tok: int, device: torch.device | None = None,
                      offset: int = 0) -> torch.Tensor:
    """Boolean (Lq, Lk) mask: query frame i (counted from ``offset``) sees key frames j <= i."""
    fq = torch.arange(frames_q, device=device).repeat_interleave(n_tok) + offset
    fk = torch.arange(frames_k, device=device).repeat_interleave(n_tok)
    return fk[None, :] <= fq[:, None]


@dataclass
class KVCache:
    """Per-layer keys/values of the context frames, plus how many frames they cover."""

    keys: list[torch.Tensor]  # each (B, heads, F_ctx * N, head_dim)
    values: list[torch.Tensor]
    frames: int


class VideoDiT(nn.Module):
    def __init__(self, config: VideoDiTConfig) -> None:
        super().__init__()
        self.config = c = config
        patch_dim = c.latent_channels * c.patch * c.patch
        self.patch_embed = nn.Linear(patch_dim, c.dim)
        self.spatial_pos = nn.Parameter(torch.zeros(1, c.tokens_per_frame, c.dim))
        self.frame_pos = nn.Embedding(c.max_frames, c.dim)
        self.time_mlp = nn.Sequential(nn.Linear(c.dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.action_mlp = nn.Sequential(nn.Linear(c.action_input_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.null_action = nn.Parameter(torch.zeros(c.dim))  # frames with no preceding action
        self.blocks = nn.ModuleList([DiTBlock(c.dim, c.heads, c.mlp_ratio, cross=c.has_plan)
                                     for _ in range(c.depth)])
        self.final_norm = nn.LayerNorm(c.dim, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 2 * c.dim))
        self.final_proj = nn.Linear(c.dim, patch_dim)
        if c.has_plan:
            self.plan_proj = nn.Linear(c.plan_dim, c.dim)
            self.plan_token_pos = nn.Parameter(torch.zeros(c.plan_tokens, c.dim))
            self.null_plan = nn.Parameter(torch.zeros(c.plan_tokens, c.dim))  # "no trajectory"
            self.plan_frame_pos = nn.Embedding(c.plan_frames + 1, c.dim)
            self.text_proj = nn.Linear(c.text_dim, c.dim) if c.text_dim else None
            # Latent-consistency head (training only): trajectory tokens from the last block.
            self.consistency_head = nn.Linear(c.dim, c.plan_tokens * c.plan_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialization: Xavier-uniform linears, small positional embeddings, and zeros
        for every modulation output and the final projection (adaLN-Zero), so each block starts
        as the identity and the network starts by predicting zero velocity."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.spatial_pos, std=0.02)
        nn.init.normal_(self.frame_pos.weight, std=0.02)
        nn.init.normal_(self.null_action, std=0.02)
        for lin in (self.time_mlp[0], self.time_mlp[2], self.action_mlp[0], self.action_mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for block in self.blocks:
            for ada in (block.ada_time, block.ada_action):
                nn.init.zeros_(ada[-1].weight)
                nn.init.zeros_(ada[-1].bias)
        nn.init.zeros_(self.final_ada[-1].weight)
        nn.init.zeros_(self.final_ada[-1].bias)
        nn.init.zeros_(self.final_proj.weight)
        nn.init.zeros_(self.final_proj.bias)
        if self.config.has_plan:
            # Small embeddings, and zero cross-attention outputs: a freshly switched-on plan
            # condition changes nothing until training teaches it to.
            for p in (self.plan_token_pos, self.null_plan, self.plan_frame_pos.weight):
                nn.init.normal_(p, std=0.02)
            for block in self.blocks:
                nn.init.zeros_(block.cross.proj.weight)
                nn.init.zeros_(block.cross.proj.bias)

    # ------------------------------------------------------------------ token plumbing
    def patchify(self, z: torch.Tensor) -> torch.Tensor:
        """(B, F, C, h, w) -> (B, F*N, C*p*p)."""
        b, f, c, h, w = z.shape
        p = self.config.patch
        z = z.view(b, f, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return z.reshape(b, f * (h // p) * (w // p), c * p * p)

    def unpatchify(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, F*N, C*p*p) -> (B, F, C, h, w)."""
        c = self.config
        b = x.shape[0]
        g = c.latent_size // c.patch
        x = x.view(b, frames, g, g, c.latent_channels, c.patch, c.patch).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, frames, c.latent_channels, c.latent_size, c.latent_size)

    def motion(self, actions: torch.Tensor, has_action: torch.Tensor, gen_start: torch.Tensor | int) -> torch.Tensor:
        """(B, F, action_dim): the running sum of the env actions of the generated frames
        (index >= gen_start, (B,) or one int for all, with actions), scaled by MOTION_SCALE; zero
        before gen_start."""
        c = self.config
        b, f = actions.shape[:2]
        per_frame = actions.reshape(b, f, c.frame_stride, c.action_dim).sum(2)  # (B, F, action_dim)
        start = torch.as_tensor(gen_start, device=actions.device).reshape(-1, 1)  # (B, 1) or (1, 1)
        gen = torch.arange(f, device=actions.device)[None, :] >= start  # (B, F)
        keep = (gen & has_action)[..., None].to(actions.dtype)
        return torch.cumsum(per_frame * keep, dim=1) * keep * MOTION_SCALE

    def embed(self, z: torch.Tensor, t: torch.Tensor, actions: torch.Tensor, has_action: torch.Tensor,
              positions: torch.Tensor, gen_start: torch.Tensor | int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens (B, F*N, dim) and per-frame time / action embeddings (B, F, dim)."""
        c = self.config
        b, f = z.shape[:2]
        x = self.patch_embed(self.patchify(z))  # (B, F*N, dim)
        pos = (self.spatial_pos.unsqueeze(1) + self.frame_pos(positions).unsqueeze(2)).flatten(1, 2)  # (B, F*N, dim)
        t_emb = self.time_mlp(timestep_embedding(t, c.dim).to(x.dtype))  # (B, F, dim)
        if c.motion_conditioning:
            if gen_start is None:
                raise ValueError("this model conditions on motion: give gen_start (B,), where each "
                                 "window's generated frames begin")
            actions = torch.cat([actions, self.motion(actions, has_action, gen_start)], dim=-1)
        a_emb = self.action_mlp(actions)  # (B, F, dim)
        a_emb = torch.where(has_action[..., None], a_emb, self.null_action.expand_as(a_emb))
        return x + pos, t_emb, a_emb

    def plan_context(self, plan: PlanCondition | None, b: int, f: int
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(query positions (B, F*N, dim), context tokens (B, M, dim)) for the blocks' cross-
        attention; the null plan where there is none. None for a model without plan conditioning."""
        c = self.config
        if not c.has_plan:
            if plan is not None:
                raise ValueError("this model has no plan conditioning (plan_tokens=0)")
            return None
        if plan is None:
            plan = PlanCondition(torch.zeros(b, c.plan_tokens, c.plan_dim), torch.zeros(b, dtype=torch.bool),
                                 torch.zeros(b, f, dtype=torch.long))
        if tuple(plan.tokens.shape) != (b, c.plan_tokens, c.plan_dim):
            raise ValueError(f"plan tokens must be (B, {c.plan_tokens}, {c.plan_dim}), got {tuple(plan.tokens.shape)}")
        if tuple(plan.has_plan.shape) != (b,) or tuple(plan.frame_index.shape) != (b, f):
            raise ValueError(f"has_plan must be (B,)=({b},) and frame_index (B, F)=({b}, {f})")
        dtype = self.plan_proj.weight.dtype
        tokens = self.plan_proj(plan.tokens.to(dtype))  # (B, S, dim)
        tokens = torch.where(plan.has_plan[:, None, None], tokens, self.null_plan.expand_as(tokens))
        ctx = tokens + self.plan_token_pos
        if self.text_proj is not None:
            if plan.text is None or tuple(plan.text.shape) != (b, c.text_dim):
                raise ValueError(f"this model needs the instruction embedding (B, {c.text_dim})")
            ctx = torch.cat([self.text_proj(plan.text.to(dtype))[:, None], ctx], dim=1)  # (B, 1+S, dim)
        index = plan.frame_index.clamp(0, c.plan_frames)
        query_pos = self.plan_frame_pos(index).repeat_interleave(c.tokens_per_frame, dim=1)  # (B, F*N, dim)
        return query_pos, ctx

    def consistency(self, x: torch.Tensor, gen_frames: torch.Tensor) -> torch.Tensor:
        """Last-block tokens (B, F*N, dim) and a (B, F) float mask of generated frames ->
        predicted trajectory tokens (B, S, Z)."""
        c = self.config
        w = gen_frames.repeat_interleave(c.tokens_per_frame, dim=1)[..., None]  # (B, F*N, 1)
        pooled = (x * w).sum(1) / w.sum(1).clamp_min(1.0)  # (B, dim)
        return self.consistency_head(pooled).view(-1, c.plan_tokens, c.plan_dim)

    def head(self, x: torch.Tensor, t_emb: torch.Tensor, frames: int) -> torch.Tensor:
        shift, scale = self.final_ada(t_emb).unsqueeze(2).chunk(2, dim=-1)  # (B, F, 1, dim) each
        return self.unpatchify(self.final_proj(modulate(self.final_norm(x), shift, scale)), frames)

    def check_inputs(self, z: torch.Tensor, t: torch.Tensor, actions: torch.Tensor,
                     has_action: torch.Tensor, positions: torch.Tensor) -> None:
        c = self.config
        b, f = z.shape[:2]
        want = (c.latent_channels, c.latent_size, c.latent_size)
        if z.ndim != 5 or tuple(z.shape[2:]) != want:
            raise ValueError(f"latents must be (B, F, {want[0]}, {want[1]}, {want[2]}), got {tuple(z.shape)}")
        if tuple(t.shape) != (b, f) or tuple(has_action.shape) != (b, f) or tuple(positions.shape) != (b, f):
            raise ValueError(f"t, has_action and positions must be (B, F)=({b}, {f})")
        if tuple(actions.shape) != (b, f, c.frame_action_dim):
            raise ValueError(f"actions must be (B, F, {c.frame_action_dim}), got {tuple(actions.shape)}")

    # ------------------------------------------------------------------ forward passes
    def forward(self, z: torch.Tensor, t: torch.Tensor, actions: torch.Tensor, has_action: torch.Tensor,
                positions: torch.Tensor, plan: PlanCondition | None = None,
                return_features: bool = False, gen_start: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Velocity prediction for every frame of a window. All inputs per frame:
        z (B, F, C, h, w), t (B, F), actions (B, F, stride*4), has_action (B, F) bool, positions (B, F) long;
        ``plan`` for a plan-conditioned model (None: the null plan). ``return_features`` also
        returns the last block's tokens (B, F*N, dim), for the consistency head. ``gen_start``
        (B,) long: the first generated frame of each window (needed with motion conditioning)."""
        self.check_inputs(z, t, actions, has_action, positions)
        b, f = z.shape[:2]
        n = self.config.tokens_per_frame
        x, t_emb, a_emb = self.embed(z, t, actions, has_action, positions, gen_start)
        mask = block_causal_mask(f, f, n, z.device)
        ctx = self.plan_context(plan, b, f)
        for block in self.blocks:
            x = block(x, block.modulation(t_emb, a_emb), mask, ctx)
        v = self.head(x, t_emb, f)
        return (v, x) if return_features else v

    def build_cache(self, z: torch.Tensor, t: torch.Tensor, actions: torch.Tensor, has_action: torch.Tensor,
                    positions: torch.Tensor, plan: PlanCondition | None = None) -> KVCache:
        """Run the context frames once and keep every layer's keys and values."""
        self.check_inputs(z, t, actions, has_action, positions)
        b, f = z.shape[:2]
        n = self.config.tokens_per_frame
        x, t_emb, a_emb = self.embed(z, t, actions, has_action, positions, gen_start=f)  # context only
        mask = block_causal_mask(f, f, n, z.device)
        ctx = self.plan_context(plan, b, f)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            mods = block.modulation(t_emb, a_emb)
            q, k, v = block.attn.qkv_heads(block.pre_attn(x, mods))
            keys.append(k)
            values.append(v)
            if i + 1 < len(self.blocks):  # the last block's output is never needed
                x = block.post_attn(x, block.attn.attend(q, k, v, mask), mods, ctx)
        return KVCache(keys, values, f)

    def forward_cached(self, z: torch.Tensor, t: torch.Tensor, actions: torch.Tensor, has_action: torch.Tensor,
                       positions: torch.Tensor, cache: KVCache, plan: PlanCondition | None = None) -> torch.Tensor:
        """Velocity for the generated frames only, attending to cached context keys/values."""
        self.check_inputs(z, t, actions, has_action, positions)
        b, f = z.shape[:2]
        n = self.config.tokens_per_frame
        if cache.keys[0].shape[0] != z.shape[0]:
            raise ValueError(f"cache batch {cache.keys[0].shape[0]} != latents batch {z.shape[0]}")
        x, t_emb, a_emb = self.embed(z, t, actions, has_action, positions, gen_start=0)  # all generated
        mask = block_causal_mask(f, cache.frames + f, n, z.device, offset=cache.frames)
        ctx = self.plan_context(plan, b, f)
        for block, ck, cv in zip(self.blocks, cache.keys, cache.values, strict=True):
            mods = block.modulation(t_emb, a_emb)
            q, k, v = block.attn.qkv_heads(block.pre_attn(x, mods))
            out = block.attn.attend(q, torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2), mask)
            x = block.post_attn(x, out, mods, ctx)
        return self.head(x, t_emb, f)

    def load_init(self, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Load another world model's weights to fine-tune from (``load_state_dict(strict=False)``'s
        missing and unexpected keys). A model without motion conditioning fits one with it: the
        action MLP's displacement inputs start at zero weight, so the fine-tune starts as
        exactly the loaded model."""
        w = self.action_mlp[0].weight
        old = state.get("action_mlp.0.weight")
        if old is not None and old.shape[1] < w.shape[1] and self.config.motion_conditioning:
            state = {**state, "action_mlp.0.weight": torch.cat([old, old.new_zeros(old.shape[0], w.shape[1] - old.shape[1])], 1)}
        return self.load_state_dict(state, strict=False)

    def checkpoint_config(self) -> dict[str, Any]:
        return {"kind": "video-dit", "model": self.config.to_dict()}

    @classmethod
    def from_config_and_tensors(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                                where: str) -> VideoDiT:
        from wmpo.utils.checkpoint import build_model

        return build_model(cls, VideoDiTConfig, config, tensors, where)
