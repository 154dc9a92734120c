"""Poisoning generators, to test defences with: label flips, backdoors, clean-label.

Every generator returns a :class:`PoisonResult` with the poisoned data and the ground-truth
mask of poisoned rows; :func:`attack_success_rate` measures a backdoor after training.
"""

from bastion.attacks.poisoning.backdoor import BackdoorAttack, BadNets, Blend
from bastion.attacks.poisoning.base import PoisonAttack, PoisonResult, Trigger
from bastion.attacks.poisoning.clean_label import CleanLabel
from bastion.attacks.poisoning.label_flip import LabelFlip
from bastion.attacks.poisoning.metrics import attack_success_rate, predict_labels

__all__ = [
    "BackdoorAttack",
    "BadNets",
    "Blend",
    "CleanLabel",
    "LabelFlip",
    "PoisonAttack",
    "PoisonResult",
    "Trigger",
    "attack_success_rate",
    "predict_labels",
]
