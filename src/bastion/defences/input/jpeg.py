"""JPEG-style compression as an input preprocessor, torch-native and batched.

The baseline JPEG pipeline (ITU-T T.81) without entropy coding, which is lossless and so does
not change the image: values in [0, 1] are scaled to 0..255 and rounded, RGB is converted to
YCbCr (no chroma subsampling), each channel is level-shifted by 128 and cut into 8x8 blocks
(edges padded by replication), each block goes through the orthonormal 2-D DCT-II, is divided
by the quality-scaled quantisation table, rounded, multiplied back, inverse-transformed, and the
result is rounded and clipped to 0..255 again. Quality follows the Independent JPEG Group's
scaling of the T.81 Annex K example tables (50 = the tables themselves, 100 = all ones).

As a defence (Dziugaite et al. 2016, https://arxiv.org/abs/1608.00853; Das et al. 2017,
https://arxiv.org/abs/1705.02900) it removes small high-frequency perturbations. Its rounding has
a zero gradient almost everywhere, so naive gradient attacks fail on it while a straight-through
(BPDA) attack does not: evaluate it with :func:`bastion.defences.input.evaluate_input_defence`.

Example
-------
>>> import torch
>>> x = torch.full((1, 1, 8, 8), 0.5)
>>> bool((jpeg_compress(x, quality=10) - x).abs().max() < 1 / 255)  # flat blocks survive
True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bastion.defences.input.base import Preprocessor
from bastion.errors import ConfigurationError, InputError

__all__ = ["JPEGCompression", "jpeg_compress", "quantisation_table"]

# ITU-T T.81 Annex K, Tables K.1 (luminance) and K.2 (chrominance), row-major.
_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)


def _check_quality(quality: object) -> int:
    if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise ConfigurationError(f"quality must be an integer from 1 to 100, got {quality!r}")
    return quality


def quantisation_table(quality: int, *, chroma: bool = False) -> torch.Tensor:
    """The 8x8 quantisation table at ``quality`` (IJG scaling of the Annex K tables)."""
    quality = _check_quality(quality)
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor(_CHROMA if chroma else _LUMA, dtype=torch.float64)
    return torch.floor((base * scale + 50) / 100).clamp(1, 255)


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Orthonormal 8-point DCT-II matrix ``D`` (``D @ v`` transforms a column ``v``)."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    i = torch.arange(8, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(device=device, dtype=dtype)


# JFIF (ITU-T T.871) full-range RGB <-> YCbCr
_RGB2YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def _blocks(x: torch.Tensor, table: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Quantise the 8x8 DCT blocks of ``x`` ``(n, H, W)`` (H, W multiples of 8, level-shifted)."""
    n, h, w = x.shape
    b = x.reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)  # (n, bh, bw, 8, 8)
    coef = d @ b @ d.T
    coef = torch.round(coef / table) * table
    b = d.T @ coef @ d
    return b.permute(0, 1, 3, 2, 4).reshape(n, h, w)


def jpeg_compress(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """JPEG-compress and decompress a batch ``(n, C, H, W)`` with ``C`` 1 or 3, values in
    [0, 1] (see the module docstring). Returns a batch of the same shape, dtype and device."""
    quality = _check_quality(quality)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise InputError(
            "jpeg_compress needs image batches (n, C, H, W) with 1 (grey) or 3 (RGB) channels, "
            f"got shape {tuple(getattr(x, 'shape', ()))}"
        )
    if not torch.is_floating_point(x):
        raise InputError(f"jpeg_compress needs floating-point images, got {x.dtype}")
    c, h, w = x.shape[1:]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    v = torch.round(x.to(work).clamp(0, 1) * 255)
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        v = F.pad(v, (0, pw, 0, ph), mode="replicate")
    d = _dct_matrix(x.device, work)
    luma = quantisation_table(quality).to(device=x.device, dtype=work)
    if c == 3:
        m = torch.tensor(_RGB2YCC, dtype=work, device=x.device)
        v = torch.einsum("ij,njhw->nihw", m, v)
        v = torch.cat([v[:, :1], v[:, 1:] + 128], dim=1)
        chroma = quantisation_table(quality, chroma=True).to(device=x.device, dtype=work)
        tables = [luma, chroma, chroma]
    else:
        tables = [luma]
    out = torch.stack([_blocks(v[:, i] - 128, tables[i], d) + 128 for i in range(c)], dim=1)
    if c == 3:
        out = torch.round(out).clamp(0, 255)  # the decoder stores YCbCr samples as bytes
        out = torch.cat([out[:, :1], out[:, 1:] - 128], dim=1)
        out = torch.einsum("ij,njhw->nihw", torch.linalg.inv(m), out)
    out = torch.round(out).clamp(0, 255) / 255
    return out[:, :, :h, :w].to(x.dtype)


class JPEGCompression(Preprocessor):
    """JPEG compression at ``quality`` (1-100, default 75) as a preprocessor.

    Not differentiable in effect (its rounding steps have zero gradient): evaluate it with BPDA.
    """

    name = "jpeg"
    differentiable = False

    def __init__(self, *, quality: int = 75) -> None:
        self.quality = _check_quality(quality)

    def _transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return jpeg_compress(x, self.quality)
