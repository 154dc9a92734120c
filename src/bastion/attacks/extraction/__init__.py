"""Model extraction: steal a classifier through its prediction API.

- :class:`EquationSolving` — exact recovery of linear softmax models from scores (Tramèr 2016).
- :class:`KnockoffNets`, :class:`CopycatCNN` (:class:`LearningExtraction`) — train a surrogate
  on the victim's answers, with a natural pool (random or Knockoff Nets' adaptive bandit
  policy, :class:`AdaptiveStrategy`), random noise or Jacobian augmentation as the query
  strategy.
- :func:`fidelity`, :func:`transfer_rate` — how good the copy is.

Every attack shares the :class:`ExtractionAttack` contract (a hard query budget enforced by the
base class) and returns an :class:`ExtractionResult`.
"""

from bastion.attacks.extraction._adaptive import AdaptiveStrategy, kmeans
from bastion.attacks.extraction._strategies import (
    JacobianStrategy,
    NoiseStrategy,
    PoolStrategy,
    QueryStrategy,
    make_strategy,
)
from bastion.attacks.extraction.base import ExtractionAttack, ExtractionResult, QueryOracle
from bastion.attacks.extraction.equation_solving import EquationSolving, LinearSoftmaxModel
from bastion.attacks.extraction.knockoff import (
    CopycatCNN,
    KnockoffNets,
    LearningExtraction,
    build_surrogate,
)
from bastion.attacks.extraction.metrics import TransferResult, fidelity, transfer_rate
from bastion.attacks.extraction.views import BlackBoxView, black_box

__all__ = [
    "AdaptiveStrategy",
    "BlackBoxView",
    "CopycatCNN",
    "EquationSolving",
    "ExtractionAttack",
    "ExtractionResult",
    "JacobianStrategy",
    "KnockoffNets",
    "LearningExtraction",
    "LinearSoftmaxModel",
    "NoiseStrategy",
    "PoolStrategy",
    "QueryOracle",
    "QueryStrategy",
    "TransferResult",
    "black_box",
    "build_surrogate",
    "fidelity",
    "kmeans",
    "make_strategy",
    "transfer_rate",
]
