"""TorchWorldModel.decode: sub-batched decoder calls give the frames of one whole-batch call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmpo.models.autoencoder import PRESETS as AE_PRESETS
from wmpo.models.autoencoder import FrameAutoencoder
from wmpo.models.video_dit import PRESETS, VideoDiT
from wmpo.sampling.world_model import TorchWorldModel


def _world_model() -> TorchWorldModel:
    torch.manual_seed(0)
    ae = FrameAutoencoder(AE_PRESETS["tiny"]).eval()  # 64x64 frames <-> 4x8x8 latents
    with torch.no_grad():  # random init decodes to a flat grey; perturb so frames vary
        for p in ae.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return TorchWorldModel(ae, VideoDiT(PRESETS["tiny"]).eval())


@pytest.mark.parametrize("decode_batch", [1, 4, 8, 64])
def test_sub_batched_decode_matches_one_decoder_call(decode_batch: int) -> None:
    wm = _world_model()
    latents = torch.randn(3, 5, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():  # reference: all 15 frames in one decoder call
        whole = wm.ae.decode_frames(latents.reshape(15, 4, 8, 8)).numpy().reshape(3, 5, 64, 64, 3)
    assert whole.std() > 20  # real images, not a constant a mix-up could still match

    wm.decode_batch = decode_batch  # 15 frames: sub-batches with a remainder for 4 and 8
    got = wm.decode(latents)

    assert got.shape == (3, 5, 64, 64, 3) and got.dtype == np.uint8
    assert got.flags.c_contiguous
    diff = np.abs(got.astype(int) - whole)
    # Different batch sizes may take different convolution kernels: float rounding can move
    # a value across a .5 boundary, by one uint8 level at most.
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-3
    if decode_batch >= 15:  # one call, as before: bit for bit
        assert diff.max() == 0
    # Frames stay in order: frame i is the decode of latent i, not a neighbour's.
    assert np.abs(got[1, 2].astype(int) - whole[1, 3]).mean() > 5
