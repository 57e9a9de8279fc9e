"""A small VLA-style policy: image encoder + instruction embedding + discretized action-chunk head.

OpenVLA-OFT style with parallel decoding: one forward pass predicts logits for all K x D
action tokens of a chunk (K=8 steps, D=4 action dimensions, 256 bins each). Tokens are
independent given the observation, so the log-probability of a chunk is exactly the sum of
its K x D token log-probabilities (WMPO eq. 3), which GRPO needs.

Actions are normalized per dimension with the 1st/99th percentiles of the training actions
(stored in the checkpoint), clipped to [-1, 1] and cut into uniform bins; a token decodes to
its bin center.

The instruction enters through FiLM on the image feature. Instructions are embedded with
all-MiniLM-L6-v2 (``wmpo.models.text``); the checkpoint keeps a table of the embeddings of
its training instructions so inference does not need to load the text model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wmpo.errors import CheckpointError, ConfigError
from wmpo.models.text import EMBED_DIM, lookup_embeddings


@dataclass
class PolicyConfig:
    image_size: int = 64
    chunk: int = 8  # K: actions per chunk
    action_dim: int = 4  # D
    bins: int = 256
    channels: tuple[int, ...] = (32, 64, 128, 128)  # conv stages, each halves the resolution
    hidden: int = 256
    token_dim: int = 64  # width of the per-token features matched against bin embeddings
    text_dim: int = EMBED_DIM
    dropout: float = 0.1

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        checks = {
            "image_size": self.image_size % (2 ** len(self.channels)) == 0 and self.image_size >= 16,
            "chunk": self.chunk >= 1,
            "action_dim": self.action_dim >= 1,
            "bins": 2 <= self.bins <= 4096,
            "channels": len(self.channels) >= 1 and all(c > 0 for c in self.channels),
            "hidden": self.hidden > 0,
            "token_dim": self.token_dim > 0,
            "dropout": 0.0 <= self.dropout < 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(
                    f"PolicyConfig.{name}={getattr(self, name)!r} is invalid "
                    "(image_size must be >= 16 and divisible by 2**len(channels); bins in [2, 4096]; "
                    "dropout in [0, 1))"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, PolicyConfig] = {
    "tiny": PolicyConfig(channels=(8, 16, 32, 32), hidden=32, token_dim=8),  # tests
    "small": PolicyConfig(),  # the bundled CPU policy, 1.7M parameters
    "base": PolicyConfig(channels=(64, 128, 256, 512), hidden=1024, token_dim=128),
}


class ActionTokenizer(nn.Module):
    """Maps continuous actions to bin indices and back, with q01/q99 normalization."""

    def __init__(self, action_dim: int, bins: int) -> None:
        super().__init__()
        self.bins = bins
        self.register_buffer("q01", -torch.ones(action_dim))
        self.register_buffer("q99", torch.ones(action_dim))

    def fit(self, actions: np.ndarray) -> None:
        q01, q99 = np.quantile(actions, [0.01, 0.99], axis=0)
        # A dimension that never varies still needs a non-empty range.
        q99 = np.maximum(q99, q01 + 1e-3)
        self.q01.copy_(torch.as_tensor(q01, dtype=torch.float32))
        self.q99.copy_(torch.as_tensor(q99, dtype=torch.float32))

    def encode(self, actions: torch.Tensor) -> torch.Tensor:
        x = 2 * (actions - self.q01) / (self.q99 - self.q01) - 1  # [-1, 1] between q01 and q99
        idx = torch.floor((x.clamp(-1, 1) + 1) / 2 * self.bins).long()
        return idx.clamp(0, self.bins - 1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        x = (tokens.float() + 0.5) / self.bins * 2 - 1  # bin centers in [-1, 1]
        return (x + 1) / 2 * (self.q99 - self.q01) + self.q01


def _conv_stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1),
        nn.GroupNorm(min(8, cout), cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(min(8, cout), cout),
        nn.SiLU(),
    )


class Policy(nn.Module):
    def __init__(self, config: PolicyConfig, instructions: list[str] | None = None) -> None:
        super().__init__()
        self.config = c = config
        chans = (3, *c.channels)
        self.encoder = nn.Sequential(*[_conv_stage(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)])
        side = c.image_size // 2 ** len(c.channels)
        self.img_proj = nn.Linear(c.channels[-1] * side * side, c.hidden)
        self.film = nn.Linear(c.text_dim, 2 * c.hidden)
        self.trunk = nn.Sequential(
            nn.LayerNorm(c.hidden), nn.SiLU(), nn.Dropout(c.dropout),
            nn.Linear(c.hidden, c.hidden), nn.SiLU(), nn.Dropout(c.dropout),
        )
        # Factorized head: per-token features (K*D of them) scored against a learned embedding
        # of every bin of that dimension; far fewer weights than a dense K*D*bins output.
        self.token_head = nn.Linear(c.hidden, c.chunk * c.action_dim * c.token_dim)
        self.bin_embed = nn.Parameter(torch.randn(c.action_dim, c.bins, c.token_dim) / c.token_dim**0.5)
        self.bin_bias = nn.Parameter(torch.zeros(c.action_dim, c.bins))
        self.tokenizer = ActionTokenizer(c.action_dim, c.bins)
        self.instructions: list[str] = list(instructions or [])
        self.register_buffer("instruction_table", torch.zeros(len(self.instructions), c.text_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        # FiLM starts as the identity (scale 1, shift 0) so the instruction cannot destabilize
        # early training; the token head starts small so initial token distributions are
        # near-uniform (log-probs ~ -log(bins)).
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        nn.init.normal_(self.token_head.weight, std=0.01)
        nn.init.zeros_(self.token_head.bias)

    # ------------------------------------------------------------------ inputs
    def set_instructions(self, instructions: list[str], embeddings: np.ndarray) -> None:
        self.instructions = list(instructions)
        self.instruction_table = torch.as_tensor(embeddings, dtype=torch.float32).clone()

    def embed(self, instructions: list[str]) -> torch.Tensor:
        """(B, text_dim) embeddings; instructions unseen in training go through MiniLM."""
        self.instructions, self.instruction_table, emb = lookup_embeddings(
            instructions, self.instructions, self.instruction_table)
        return emb

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        c = self.config
        if images.ndim != 4 or images.shape[1:] != (c.image_size, c.image_size, 3):
            raise ValueError(
                f"images must be (B, {c.image_size}, {c.image_size}, 3), got {tuple(images.shape)}"
            )
        x = images.permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        return x / 127.5 - 1.0 if images.dtype == torch.uint8 else x

    # ------------------------------------------------------------------ network
    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """images (B, H, W, 3) uint8 or float in [-1, 1]; text (B, text_dim) -> logits (B, K, D, bins)."""
        c = self.config
        h = self.encoder(self._images(images)).flatten(1)  # (B, C * side * side)
        h = self.img_proj(h)  # (B, hidden)
        scale, shift = self.film(text).chunk(2, dim=-1)  # (B, hidden) each
        h = self.trunk(h * (1 + scale) + shift)
        tok = self.token_head(h).view(-1, c.chunk, c.action_dim, c.token_dim)  # (B, K, D, E)
        return torch.einsum("bkde,dne->bkdn", tok, self.bin_embed) + self.bin_bias  # (B, K, D, bins)

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def sample_tokens(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample a chunk of tokens (B, K, D); temperature 0 is greedy. Also returns log-probs (B,)
        of the sampled chunk under the temperature-1 policy (the quantity GRPO ratios use)."""
        logits = self(images, text)
        if temperature <= 0:
            tokens = logits.argmax(-1)
        else:
            probs = F.softmax(logits / temperature, dim=-1).flatten(0, 2)  # (B*K*D, bins)
            tokens = torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])
        return tokens, chunk_log_prob(logits, tokens)

    def log_prob(self, images: torch.Tensor, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Exact log-probability (B,) of token chunks (B, K, D): the sum over K x D tokens."""
        return chunk_log_prob(self(images, text), tokens)

    @torch.no_grad()
    def act(
        self,
        frames: np.ndarray,
        instructions: list[str],
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """Frames (B, H, W, 3) uint8 -> action chunks (B, K, D) float32 in env units."""
        images = torch.as_tensor(np.ascontiguousarray(frames))
        tokens, _ = self.sample_tokens(images, self.embed(instructions), temperature, generator)
        return self.tokenizer.decode(tokens).clamp(-1, 1).numpy().astype(np.float32)

    # ------------------------------------------------------------------ persistence
    def checkpoint_config(self) -> dict[str, Any]:
        return {"kind": "policy", "model": self.config.to_dict(), "instructions": self.instructions}

    @classmethod
    def from_checkpoint(cls, directory: str, device: str = "cpu") -> tuple[Policy, dict[str, Any]]:
        from wmpo.utils.checkpoint import load_checkpoint

        tensors, config, manifest = load_checkpoint(directory)
        if config.get("kind") != "policy":
            raise CheckpointError(f"{directory} is a {config.get('kind')!r} checkpoint, not a policy")
        try:
            policy = cls(PolicyConfig(**config["model"]), config.get("instructions", []))
            policy.load_state_dict(tensors)
        except (TypeError, RuntimeError, KeyError) as e:
            raise CheckpointError(f"policy checkpoint {directory} does not match this code: {e}") from e
        return policy.to(device).eval(), manifest


def chunk_log_prob(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Sum of token log-probs over K x D. logits (B, K, D, bins), tokens (B, K, D) -> (B,)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).flatten(1).sum(-1)
