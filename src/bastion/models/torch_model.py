"""Adapter for any ``torch.nn.Module`` that returns logits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from bastion.errors import ConfigurationError
from bastion.models.base import BaseClassifier, Capability

__all__ = ["TorchClassifier"]


class TorchClassifier(BaseClassifier):
    """A white-box classifier over a torch module, used in place on its own device.

    Parameters
    ----------
    module:
        Any ``nn.Module`` mapping a batch ``(n, *input_shape)`` to logits ``(n, num_classes)``.
        It is not copied: attacks query it where it lives.
    input_shape, num_classes, bounds:
        The shape of one input, the number of classes, and the valid input range.
    preprocessing:
        Optional ``(mean, std)`` applied inside the classifier (``(x - mean) / std``), so that
        attacks work in input space. Scalars or per-channel sequences.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> from bastion.models import TorchClassifier
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> clf = TorchClassifier(net, input_shape=(4,), num_classes=3)
    >>> clf.logits(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        bounds: tuple[float, float] = (0.0, 1.0),
        preprocessing: tuple[float | Sequence[float], float | Sequence[float]] | None = None,
        query_budget: int | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ConfigurationError(
                f"module must be a torch.nn.Module, got {type(module).__name__}"
            )
        super().__init__(
            input_shape=tuple(input_shape),
            num_classes=num_classes,
            bounds=bounds,
            capabilities=Capability.white_box(),
            query_budget=query_budget,
        )
        self.module = module
        self._mean: torch.Tensor | None = None
        self._std: torch.Tensor | None = None
        if preprocessing is not None:
            mean, std = preprocessing
            self._mean = self._broadcastable(mean, "mean")
            self._std = self._broadcastable(std, "std")
            if (self._std <= 0).any():
                raise ConfigurationError("preprocessing std must be positive")

    def _broadcastable(self, value: float | Sequence[float], what: str) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=torch.float32, device=self.device).flatten()
        if t.numel() == 1:
            return t.reshape(())
        channels = self.input_shape[0]
        if t.numel() != channels:
            raise ConfigurationError(
                f"preprocessing {what} has {t.numel()} values; give one or one per channel "
                f"({channels})"
            )
        return t.reshape((channels,) + (1,) * (len(self.input_shape) - 1))

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        dev = self.device
        if x.device != dev:
            x = x.to(dev)
        if self._mean is not None and self._std is not None:
            x = (x - self._mean.to(dev)) / self._std.to(dev)
        out = self.module(x)
        return out

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        """Put the module (and all submodules) in eval mode; restore each one's mode after."""
        modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training

    def __repr__(self) -> str:
        pre = "" if self._mean is None else ", preprocessing=(mean, std)"
        return (
            f"TorchClassifier({type(self.module).__name__}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, bounds={self.bounds}{pre})"
        )
