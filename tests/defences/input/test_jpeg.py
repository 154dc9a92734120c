"""JPEG compression: closed-form behaviour of the codec, and its adaptive evaluation."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from bastion.defences.input import (
    JPEGCompression,
    evaluate_input_defence,
    jpeg_compress,
    quantisation_table,
)
from bastion.errors import ConfigurationError, InputError


def _basis(u: int, v: int) -> torch.Tensor:
    """The orthonormal 8x8 DCT basis image (u, v)."""

    def c(k: int) -> torch.Tensor:
        i = torch.arange(8, dtype=torch.float64)
        scale = math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8)
        return scale * torch.cos(math.pi * (2 * i + 1) * k / 16)

    return torch.outer(c(u), c(v))


def test_quantisation_tables() -> None:
    assert quantisation_table(50)[0, 0] == 16 and quantisation_table(50)[7, 7] == 99
    assert torch.equal(quantisation_table(100), torch.ones(8, 8, dtype=torch.float64))
    assert quantisation_table(10)[0, 0] == 80  # scale 500%: floor((16 * 500 + 50) / 100)
    assert quantisation_table(75, chroma=True)[0, 0] == 9  # floor((17 * 50 + 50) / 100)


def test_a_small_high_frequency_pattern_is_removed_and_kept_at_quality_100() -> None:
    """128 + 40 * basis(7, 7): the coefficient 40 rounds to 0 against Q = 99 (quality 50)."""
    img = (128 + 40 * _basis(7, 7)).round() / 255
    x = img.float()[None, None]
    out50 = jpeg_compress(x, quality=50)
    assert torch.allclose(out50, torch.full_like(x, 128 / 255))
    out100 = jpeg_compress(x, quality=100)
    assert float((out100 - x).abs().max()) <= 1.5 / 255


def test_flat_blocks_stay_flat_and_error_shrinks_with_quality() -> None:
    flat = torch.full((2, 1, 8, 8), 0.3)
    out = jpeg_compress(flat, quality=10)
    assert float(out.std()) == 0.0
    # DC quantisation error: at most Q_dc / 2 / 8 grey levels (Q_dc = 80 at quality 10)
    assert float((out - flat).abs().max()) <= (80 / 16 + 1) / 255
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(4, 1, 36, 36, generator=g), 5, 1)
    errors = [float((jpeg_compress(smooth, quality=q) - smooth).abs().mean()) for q in (10, 50, 95)]
    assert errors[0] > errors[1] > errors[2]
    assert float((jpeg_compress(smooth, quality=100) - smooth).abs().max()) <= 3 / 255


def test_rgb_grey_matches_greyscale_and_shapes_are_kept() -> None:
    g = torch.Generator().manual_seed(1)
    grey = torch.rand(3, 1, 10, 13, generator=g)
    out_grey = jpeg_compress(grey, quality=60)
    assert out_grey.shape == grey.shape and out_grey.dtype == grey.dtype
    out_rgb = jpeg_compress(grey.expand(3, 3, 10, 13).contiguous(), quality=60)
    assert out_rgb.shape == (3, 3, 10, 13)
    assert torch.allclose(out_rgb, out_grey.expand_as(out_rgb), atol=1.01 / 255)
    colour = torch.rand(2, 3, 16, 16, generator=g)
    out = jpeg_compress(colour, quality=80)
    assert 0 < float((out - colour).abs().mean()) < 0.1
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_gradient_is_masked() -> None:
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    jpeg_compress(x, quality=75).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) == 0.0


def test_jpeg_validation() -> None:
    for q in (0, 101, 50.0, True):
        with pytest.raises(ConfigurationError, match="quality"):
            JPEGCompression(quality=q)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="1 \\(grey\\) or 3"):
        jpeg_compress(torch.rand(2, 2, 8, 8))
    with pytest.raises(InputError, match="floating"):
        jpeg_compress(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_jpeg_fools_naive_pgd_but_bpda_reports_it_weak(digits_cnn: Any) -> None:
    clf, x, y = digits_cnn.clf, digits_cnn.x_test, digits_cnn.y_test
    report = evaluate_input_defence(clf, JPEGCompression(quality=50), x, y, eps=0.1)
    assert report.adaptive_attack == "pgd+bpda"
    assert report.clean_accuracy >= 0.9
    # the naive attack sees a zero gradient: JPEG "raises" robust accuracy far above the
    # undefended model's (measured 0.97 vs 0.40) ...
    assert report.naive_robust_accuracy is not None
    assert report.naive_robust_accuracy >= report.undefended_robust_accuracy + 0.3
    # ... and BPDA brings it back down to the undefended level (measured 0.44)
    assert report.adaptive <= report.undefended_robust_accuracy + 0.1
    assert report.verdict == "weak" and report.gradient_masking
    assert "gradient masking" in report.reason
