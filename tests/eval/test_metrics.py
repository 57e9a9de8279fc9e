import numpy as np
import torch

from wmpo.eval.metrics import moving_mask, psnr, ssim


def imgs(seed=0, n=2):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8))


def test_ssim_and_psnr_basics():
    a = imgs()
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-5)
    assert torch.all(psnr(a, a) > 90)
    noisy = (a.int() + torch.randint(-20, 20, a.shape)).clamp(0, 255).to(torch.uint8)
    assert torch.all(ssim(a, noisy) < 0.99) and torch.all(ssim(a, noisy) > ssim(a, imgs(1)))
    # PSNR of a constant error of 10 levels: 20 log10(255 / 10)
    b = (a.int() + 10).clamp(max=255)
    b[a.int() + 10 > 255] = a.int()[a.int() + 10 > 255] - 10
    assert torch.allclose(psnr(a, b.to(torch.uint8)), torch.full((2,), 20 * np.log10(25.5)), atol=1e-3)


def test_masked_metrics_only_look_inside_the_mask():
    a = imgs()
    b = a.clone()
    b[:, :16] = 0  # damage the top half only
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[:, 20:] = True
    assert torch.all(psnr(a, b, mask) > 90)
    assert torch.all(psnr(a, b, ~mask) < 30)


def test_moving_mask():
    start = torch.zeros(32, 32, 3, dtype=torch.uint8)
    truth = torch.zeros(1, 32, 32, 3, dtype=torch.uint8)
    truth[0, 5:10, 5:10, 0] = 200
    m = moving_mask(truth, start)
    assert m.sum() == 25 and m[0, 7, 7]
