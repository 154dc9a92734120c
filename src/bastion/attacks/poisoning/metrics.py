"""How well a planted backdoor works once a model has been trained on the poisoned data."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bastion.errors import InputError

__all__ = ["attack_success_rate", "predict_labels"]


@torch.no_grad()
def predict_labels(
    model: nn.Module | object, x: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """Predicted labels of an ``nn.Module`` (eval mode, restored) or a bastion Classifier."""
    if isinstance(model, nn.Module):
        was = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            out = [
                model(x[i : i + batch_size].to(device)).argmax(1).cpu()
                for i in range(0, x.shape[0], batch_size)
            ]
        finally:
            model.train(was)
    elif hasattr(model, "predict"):
        unmetered = getattr(model, "unmetered", None)
        out = []
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(getattr(model, "device", "cpu"))
            if unmetered is not None:
                with unmetered():
                    out.append(model.predict(xb).cpu())
            else:
                out.append(model.predict(xb).cpu())
    else:
        raise InputError(f"model must be an nn.Module or a Classifier, got {type(model).__name__}")
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def attack_success_rate(
    model: nn.Module | object,
    x_clean_nontarget: torch.Tensor,
    trigger: Callable[[torch.Tensor], torch.Tensor],
    target: int,
    *,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> float:
    """Fraction of triggered non-target-class inputs that ``model`` sends to ``target``.

    ``trigger`` is a :class:`~bastion.attacks.poisoning.Trigger` or any batch function (e.g.
    ``BadNets.apply_trigger``); the triggered inputs are clipped to ``bounds``.

    Example
    -------
    >>> import torch
    >>> from torch import nn
    >>> always_3 = nn.Linear(2, 5)
    >>> with torch.no_grad():
    ...     _ = always_3.weight.zero_(); _ = always_3.bias.copy_(torch.eye(5)[3])
    >>> attack_success_rate(always_3, torch.rand(10, 2), lambda x: x, 3)
    1.0
    """
    if not isinstance(x_clean_nontarget, torch.Tensor) or x_clean_nontarget.shape[0] == 0:
        raise InputError("x_clean_nontarget must be a non-empty tensor of clean inputs")
    x_t = trigger(x_clean_nontarget)
    if bounds is not None:
        x_t = x_t.clamp(*bounds)
    pred = predict_labels(model, x_t)
    return float((pred == int(target)).float().mean())
