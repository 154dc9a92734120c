"""Evasion attacks: white-box, score-based and decision-based.

Every attack shares the :class:`~bastion.attacks.evasion.base.EvasionAttack` contract and
returns an :class:`~bastion.attacks.evasion.base.EvasionResult`. The CLI names are in
:mod:`bastion.attacks.evasion.catalog`.
"""

from bastion.attacks.evasion.apgd import APGD, APGDCE, APGDDLR, APGDT
from bastion.attacks.evasion.autoattack import AutoAttack
from bastion.attacks.evasion.base import EvasionAttack, EvasionResult
from bastion.attacks.evasion.cw import CarliniWagnerL2
from bastion.attacks.evasion.deepfool import DeepFool
from bastion.attacks.evasion.fgsm import FGSM
from bastion.attacks.evasion.hopskipjump import HopSkipJump
from bastion.attacks.evasion.pgd import PGD
from bastion.attacks.evasion.square import Square

__all__ = [
    "APGD",
    "APGDCE",
    "APGDDLR",
    "APGDT",
    "FGSM",
    "PGD",
    "AutoAttack",
    "CarliniWagnerL2",
    "DeepFool",
    "EvasionAttack",
    "EvasionResult",
    "HopSkipJump",
    "Square",
]
