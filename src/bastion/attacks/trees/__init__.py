"""Attacks and verification that use a tree ensemble's structure (:mod:`bastion.models.trees`).

- :class:`TreeMILP` / :func:`minimal_perturbation`: exact minimal adversarial perturbations
  (L∞, L1, L2) within the data's rules, by mixed-integer programming (Kantchelian et al.,
  2016); each distance is also a certificate.
- :class:`FastTreeAttack` / :func:`fast_tree_attack`: a fast L∞ cell (leaf-tuple) search
  for large ensembles (after Zhang, Zhang and Hsieh, 2020), within the same rules.
- :func:`certify`: certified robust accuracy at ``eps`` (the fraction of rows with a
  certificate), with a Wilson interval.
"""

from bastion.attacks.trees._milp import ExactSolution, TreeMILP
from bastion.attacks.trees.exact import (
    Certification,
    ExactTreeAttack,
    certify,
    minimal_perturbation,
)
from bastion.attacks.trees.fast import FastTreeAttack, FastTreeResult, fast_tree_attack

__all__ = [
    "Certification",
    "ExactSolution",
    "ExactTreeAttack",
    "FastTreeAttack",
    "FastTreeResult",
    "TreeMILP",
    "certify",
    "fast_tree_attack",
    "minimal_perturbation",
]
