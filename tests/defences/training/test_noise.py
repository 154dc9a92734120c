"""DP-SGD's Gaussian noise (``gaussian_fill``): the right distribution and std, fresh and
reproducible draws, and a DP gradient that is exactly the clipped sum plus that noise."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from bastion.defences.training.dp import gaussian_fill, private_gradient
from bastion.errors import InputError
from bastion.models.zoo import small_mlp


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [200_001, 200_000])  # odd and even lengths
def test_fill_is_gaussian_with_the_stated_std(dtype: torch.dtype, n: int) -> None:
    t = torch.empty(n, dtype=dtype)
    gaussian_fill(t, 2.5, torch.Generator().manual_seed(0))
    z = (t / 2.5).numpy()
    # std error of the sample std ≈ 1/sqrt(2n) ≈ 0.0016: 5 of them
    assert abs(float(z.std()) - 1.0) < 0.008 and abs(float(z.mean())) < 0.012
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # the two halves (cosines, sines of the same pairs) are uncorrelated and each Gaussian
    half = n // 2
    assert abs(float(torch.corrcoef(torch.stack([t[:half], t[half : 2 * half]]))[0, 1])) < 0.01
    assert stats.kstest(z[half:], "norm").pvalue > 1e-3
    # tails as a Gaussian's: P(|z| > 3) = 0.0027
    tail = float((abs(z) > 3).mean())
    assert abs(tail - 0.0027) < 5 * math.sqrt(0.0027 / n)


def test_fill_is_reproducible_fresh_and_falls_back() -> None:
    a, b, c = (torch.empty(1001) for _ in range(3))
    gen = torch.Generator().manual_seed(7)
    gaussian_fill(a, 1.0, gen)
    gaussian_fill(b, 1.0, gen)
    gaussian_fill(c, 1.0, torch.Generator().manual_seed(7))
    assert torch.equal(a, c) and not torch.allclose(a, b)
    h = torch.empty(1000, dtype=torch.float16)  # other dtypes: torch's normal_
    gaussian_fill(h, 1.0, torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(h).all()) and 0.9 < float(h.float().std()) < 1.1
    with pytest.raises(InputError, match="1-d contiguous"):
        gaussian_fill(torch.empty(4, 4), 1.0)


def test_dp_gradient_is_clipped_sum_plus_the_noise() -> None:
    """Same generator state: (noisy gradient) − (pure noise of an empty batch) equals the
    noiseless DP gradient to 1e-6, for both engines."""
    torch.manual_seed(0)
    net = small_mlp(32, 5, hidden=16)
    x, y = torch.randn(12, 32), torch.randint(0, 5, (12,))
    kw = dict(max_grad_norm=0.5, expected_batch_size=12.0)
    for engine in ("auto", "vmap"):
        private_gradient(
            net,
            x,
            y,
            noise_std=1.3,
            generator=torch.Generator().manual_seed(5),
            engine=engine,
            **kw,  # type: ignore[arg-type]
        )
        noisy = [p.grad.clone() for p in net.parameters()]  # type: ignore[union-attr]
        private_gradient(
            net,
            x[:0],
            y[:0],
            noise_std=1.3,
            generator=torch.Generator().manual_seed(5),
            **kw,  # type: ignore[arg-type]
        )
        noise = [p.grad.clone() for p in net.parameters()]  # type: ignore[union-attr]
        private_gradient(net, x, y, noise_std=0.0, engine=engine, **kw)  # type: ignore[arg-type]
        clean = [p.grad.clone() for p in net.parameters()]  # type: ignore[union-attr]
        for g, z, c in zip(noisy, noise, clean, strict=True):
            torch.testing.assert_close(g - z, c, atol=1e-6, rtol=0)
        flat = torch.cat([z.flatten() for z in noise])
        assert abs(float(flat.std()) - 1.3 / 12) < 0.15 * 1.3 / 12
