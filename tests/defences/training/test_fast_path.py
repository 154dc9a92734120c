"""The Linear/Conv2d DP-SGD engine: per-sample conv gradients, equality with Opacus's clipped
gradient, the flat noise buffer, and the cases it must hand back to vmap."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from bastion.defences.training import _fast_path
from bastion.defences.training.dp import private_gradient
from bastion.models.zoo import small_cnn, small_mlp

CONVS = {
    "pad1": dict(kernel_size=3, padding=1),
    "valid": dict(kernel_size=3),
    "rect-pad": dict(kernel_size=(3, 2), padding=(2, 1)),
    "dilated": dict(kernel_size=3, padding=(1, 2), dilation=(1, 2)),
    "stride2": dict(kernel_size=3, padding=1, stride=2),
    "stride-2-1": dict(kernel_size=(2, 3), stride=(2, 1), dilation=2),
}


def _per_sample_loop(layer: nn.Conv2d, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Each example's weight gradient from an ordinary autograd call, one example at a time."""
    out = []
    for i in range(a.shape[0]):
        w = layer.weight.detach().clone().requires_grad_(True)
        z = F.conv2d(a[i : i + 1], w, None, layer.stride, layer.padding, layer.dilation)
        (g,) = torch.autograd.grad(z, w, grad_outputs=d[i : i + 1])
        out.append(g.flatten())
    return torch.stack(out).view(a.shape[0], layer.out_channels, -1)


@pytest.mark.parametrize("chunk", [1 << 19, 100])  # one chunk; many chunks with a remainder
@pytest.mark.parametrize("kind", list(CONVS))
def test_conv_per_sample_grads_equal_a_per_example_loop(
    kind: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fast_path, "_CHUNK_FLOATS", chunk)
    gen = torch.Generator().manual_seed(0)
    layer = nn.Conv2d(3, 4, **CONVS[kind]).double()  # type: ignore[arg-type]
    a = torch.randn(7, 3, 9, 10, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        shape = layer(a).shape
    d = torch.randn(shape, generator=gen, dtype=torch.float64)
    got = _fast_path.conv_per_sample_grads(layer, a, d)
    torch.testing.assert_close(got, _per_sample_loop(layer, a, d), atol=1e-10, rtol=1e-10)


def _conv_net(kind: str) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, **CONVS[kind]),  # type: ignore[arg-type]
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(27, 10),
    )


def _net(kind: str) -> nn.Module:
    if kind == "mlp":
        return small_mlp(144, 10, hidden=32)
    if kind == "cnn":
        return small_cnn((1, 12, 12), 10, width=4)
    return _conv_net(kind.removeprefix("conv-"))


NETS = ["mlp", "cnn", *(f"conv-{k}" for k in CONVS)]


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("kind", NETS)
def test_dp_gradient_equals_opacus(kind: str) -> None:
    """The noiseless DP-SGD gradient (clip at C, sum, divide by the expected batch size) is
    Opacus's ``DPOptimizer.pre_step`` gradient to float32 rounding."""
    opacus = pytest.importorskip("opacus")
    from opacus.optimizers import DPOptimizer

    gen = torch.Generator().manual_seed(1)
    x = 3 * torch.rand(16, 1, 12, 12, generator=gen)  # large enough that most clip
    y = torch.randint(0, 10, (16,), generator=gen)
    torch.manual_seed(0)
    ours = _net(kind)
    theirs = opacus.GradSampleModule(_net(kind))
    theirs._module.load_state_dict(ours.state_dict())
    assert _fast_path.supported(ours)
    private_gradient(ours, x, y, max_grad_norm=0.5, noise_std=0.0, expected_batch_size=20.0)
    opt = DPOptimizer(
        torch.optim.SGD(theirs.parameters(), lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=0.5,
        expected_batch_size=20,
    )
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(theirs(x), y).backward()
    opt.pre_step()
    for a, b in zip(ours.parameters(), theirs._module.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        assert float((a.grad - b.grad).abs().max()) <= 1e-6
    # and the clipping was active: the unclipped mean gradient differs
    ours.zero_grad(set_to_none=True)
    (F.cross_entropy(ours(x), y, reduction="sum") / 20).backward()
    pairs = zip(ours.parameters(), theirs._module.parameters(), strict=True)
    diffs = [float((a.grad - b.grad).abs().max()) for a, b in pairs]
    assert max(diffs) > 1e-3


def test_noise_is_one_flat_draw_with_the_stated_std() -> None:
    """All .grad tensors are views of one buffer; with no examples the gradient is pure
    N(0, (σC / B)²) noise, and the fast and vmap engines draw the very same noise."""
    net = small_mlp(64, 10, hidden=128)
    private_gradient(
        net,
        torch.zeros(0, 64),
        torch.zeros(0, dtype=torch.long),
        max_grad_norm=1.0,
        noise_std=2.0,
        expected_batch_size=4.0,
        generator=torch.Generator().manual_seed(0),
    )
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads)
    base = grads[0]._base  # type: ignore[union-attr]
    assert base is not None and all(g._base is base for g in grads)  # type: ignore[union-attr]
    flat = torch.cat([g.flatten() for g in grads])  # type: ignore[union-attr]
    assert flat.numel() == sum(p.numel() for p in net.parameters()) == 9610
    # std 0.5; n = 9610 gives a standard error of 0.5 / sqrt(2n) ≈ 0.0036
    assert abs(float(flat.std()) - 0.5) < 0.02 and abs(float(flat.mean())) < 0.02

    x, y = torch.randn(9, 64), torch.randint(0, 10, (9,))
    runs = []
    for engine in ("auto", "vmap"):
        private_gradient(
            net,
            x,
            y,
            max_grad_norm=1.0,
            noise_std=1.0,
            expected_batch_size=9.0,
            generator=torch.Generator().manual_seed(3),
            engine=engine,
        )
        runs.append([p.grad.clone() for p in net.parameters()])  # type: ignore[union-attr]
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_unhandled_input_leaves_buffers_untouched() -> None:
    """A Linear fed 3-d input is not per-example separable here: ``None``, nothing written."""
    net = nn.Sequential(
        nn.Flatten(1, 2), nn.Linear(8, 10), nn.ReLU(), nn.Flatten(), nn.Linear(80, 10)
    )
    out = {k: torch.full_like(p, 7.0) for k, p in net.named_parameters()}
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    assert _fast_path.supported(net)
    assert _fast_path.accumulate(net, x, y, 1.0, out) is None
    assert all(bool((t == 7.0).all()) for t in out.values())


class _ScaledLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_layers_with_other_forwards_take_the_vmap_path() -> None:
    """A Linear subclass with its own forward, a parametrized Linear, an unknown module and
    a layer with a buffer are not trusted to follow the formulas."""
    plain = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert _fast_path.supported(plain)
    assert not _fast_path.supported(nn.Sequential(_ScaledLinear(4, 3), nn.Linear(3, 2)))
    assert not _fast_path.supported(nn.Sequential(nn.Linear(4, 3), _Double(), nn.Linear(3, 2)))
    lin = nn.Linear(4, 3)
    parametrize.register_parametrization(lin, "weight", _Double())
    assert not _fast_path.supported(nn.Sequential(lin, nn.Linear(3, 2)))
    with_buffer = nn.Sequential(nn.Linear(4, 3))
    with_buffer.register_buffer("scale", torch.ones(1))
    assert not _fast_path.supported(with_buffer)


def test_next_step_refills_the_same_buffer_with_fresh_noise() -> None:
    """A second call writes into the previous step's buffer (no new allocation) with new
    noise and the new clipped sum; gradients the caller replaced are not written into."""
    torch.manual_seed(0)
    net = small_mlp(16, 3, hidden=8)
    x, y = torch.randn(5, 16), torch.randint(0, 3, (5,))
    gen = torch.Generator().manual_seed(0)
    kw = dict(max_grad_norm=1.0, noise_std=1.0, expected_batch_size=5.0, generator=gen)
    private_gradient(net, x, y, **kw)  # type: ignore[arg-type]
    first = [p.grad.clone() for p in net.parameters()]  # type: ignore[union-attr]
    olds = [p.grad for p in net.parameters()]  # kept alive: a new buffer would lie elsewhere
    ptrs = [g.data_ptr() for g in olds]  # type: ignore[union-attr]
    private_gradient(net, x, y, **kw)  # type: ignore[arg-type]
    assert [p.grad.data_ptr() for p in net.parameters()] == ptrs  # type: ignore[union-attr]
    assert all(
        not torch.allclose(a, p.grad)  # type: ignore[arg-type]
        for a, p in zip(first, net.parameters(), strict=True)
    )
    # same generator state → same numbers as a fresh buffer would get
    fresh = small_mlp(16, 3, hidden=8)
    fresh.load_state_dict(net.state_dict())
    gen2 = torch.Generator().manual_seed(0)
    kw2 = dict(max_grad_norm=1.0, noise_std=1.0, expected_batch_size=5.0, generator=gen2)
    private_gradient(fresh, x, y, **kw2)  # type: ignore[arg-type]
    for p in fresh.parameters():
        p.grad = None  # the second step allocates a new buffer
    private_gradient(fresh, x, y, **kw2)  # type: ignore[arg-type]
    for a, b in zip(net.parameters(), fresh.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    layer = next(m for m in net.modules() if isinstance(m, nn.Linear))
    mine = torch.zeros_like(layer.weight)
    layer.weight.grad = mine
    private_gradient(net, x, y, **kw)  # type: ignore[arg-type]
    assert bool((mine == 0).all()) and layer.weight.grad is not mine
