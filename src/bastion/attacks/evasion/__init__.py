"""Evasion attacks: white-box, score-based and decision-based.

Every attack shares the :class:`~bastion.attacks.evasion.base.EvasionAttack` contract and
returns an :class:`~bastion.attacks.evasion.base.EvasionResult`.
"""

from bastion.attacks.evasion.base import EvasionAttack, EvasionResult
from bastion.attacks.evasion.fgsm import FGSM
from bastion.attacks.evasion.pgd import PGD

__all__ = ["FGSM", "PGD", "EvasionAttack", "EvasionResult"]
