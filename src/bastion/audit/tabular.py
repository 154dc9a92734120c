"""Tables in an audit: named columns kept in the model's order, and the feature schema.

A tabular audit reads ``--train``/``--test`` as CSV or Parquet with named columns (the label
column named by ``label``, else ``y``/``label``/``target``/``class`` or the last), and the
data contract named by ``contract`` (``bastion data infer-contract``). :func:`align_columns`
puts the columns in the order the model takes them (a tree model file records its feature
names; a table with other columns is cut to the model's, a table lacking one is refused),
and :func:`schema_for` turns the contract into the
:class:`~bastion.data.tabular.FeatureSchema` every check reads as ``ctx.schema`` (ranges,
integer, categorical codes, one-hot groups, immutable columns, costs).

>>> import numpy as np
>>> raw = {"test": (np.array([[1.0, 2.0, 3.0]]), np.array([0]), ("b", "a", "id"))}
>>> out, names = align_columns(raw, ("a", "b"))
>>> names, out["test"][0].tolist()
(('a', 'b'), [[2.0, 1.0]])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bastion.errors import ConfigurationError, InputError

__all__ = ["Named", "align_columns", "load_audit_contract", "schema_for"]

#: one data role's ``(x, y, feature names or None)``
Named = tuple[np.ndarray, np.ndarray, "tuple[str, ...] | None"]


def align_columns(
    raw: Mapping[str, Named], model_names: Sequence[str] | None
) -> tuple[dict[str, Named], tuple[str, ...] | None]:
    """Every role's columns in one order: the model's when it names its features, else the
    first named table's. Returns the reordered data and the feature names (``None`` when no
    data set names its columns)."""
    named = {role: v[2] for role, v in raw.items() if v[2] is not None}
    if not named:
        return dict(raw), None
    if len(named) != len(raw):
        plain = sorted(set(raw) - set(named))
        raise InputError(
            f"the {', '.join(plain)} data has no column names but the "
            f"{', '.join(sorted(named))} data is a named table; give every data set as a table"
        )
    first_role, first = next(iter(named.items()))
    order = tuple(model_names) if model_names else first
    out: dict[str, Named] = {}
    for role, names in named.items():  # every role is named here (checked above)
        x, y, _ = raw[role]
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in order if n not in index]
        if missing:
            whose = "the model's" if model_names else f"the {first_role} data's"
            raise InputError(
                f"the {role} data lacks {whose} column(s) {', '.join(missing[:10])}; "
                f"it has {', '.join(names[:20])}"
            )
        if not model_names and set(names) != set(order):
            extra = sorted(set(names) - set(order))
            raise InputError(
                f"the {role} data has column(s) {', '.join(extra[:10])} that the {first_role} "
                "data lacks; give both data sets the same columns"
            )
        cols = [index[n] for n in order]
        out[role] = (np.ascontiguousarray(x[:, cols]), y, order)
    return out, order


def load_audit_contract(path: Path) -> Any:
    """The table contract of ``path``, refusing a tensor contract."""
    from bastion.data.contracts import TableContract, load_contract

    contract = load_contract(path)
    if not isinstance(contract, TableContract):
        raise ConfigurationError(
            f"{path} is a tensor contract; a tabular audit needs a table contract "
            "(bastion data infer-contract on the CSV or Parquet training table)"
        )
    return contract


def schema_for(
    contract: Any, names: Sequence[str] | None, width: int, label: str | None = None
) -> Any:
    """The :class:`~bastion.data.tabular.FeatureSchema` of the model's columns.

    ``names`` are the data's feature columns; without them (``.npz`` data) the contract's
    columns but the label's are taken in the contract's order. The schema must have one
    column per model input (``width``).
    """
    from bastion.data.loaders import _LABEL_COLUMNS
    from bastion.data.tabular import FeatureSchema

    if names is None:
        labels = {label} if label else set(_LABEL_COLUMNS)
        names = [c.name for c in contract.columns if c.name.lower() not in labels
                 and c.name not in labels]
    known = {c.name for c in contract.columns}
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigurationError(
            f"the data contract {contract.name!r} has no rule for column(s) "
            f"{', '.join(missing[:10])}; infer it from the same table "
            "(bastion data infer-contract)"
        )
    if len(names) != width:
        raise ConfigurationError(
            f"the data contract gives {len(names)} feature columns but the model takes {width}"
        )
    return FeatureSchema.from_contract(contract, columns=list(names))
