"""Tree ensembles as first-class models: structure, validation, adapters.

:class:`TreeEnsemble` is the one flattened representation of XGBoost, LightGBM and
scikit-learn tree classifiers (see :mod:`bastion.models.trees._ensemble`); :func:`to_ensemble`
converts a fitted model, :func:`from_xgboost_json` and :func:`from_lightgbm_text` parse the
native formats, and :class:`TreeClassifier` is the :class:`~bastion.models.Classifier` adapter
that evaluates the validated structure with numpy.
"""

from bastion.models.trees._convert import (
    from_lightgbm_text,
    from_sklearn_trees,
    from_xgboost_json,
    to_ensemble,
)
from bastion.models.trees._ensemble import Tree, TreeEnsemble, validate_tree
from bastion.models.trees.classifier import TreeClassifier, from_trees

__all__ = [
    "Tree",
    "TreeClassifier",
    "TreeEnsemble",
    "from_lightgbm_text",
    "from_sklearn_trees",
    "from_trees",
    "from_xgboost_json",
    "to_ensemble",
    "validate_tree",
]
