"""Data contracts: infer what reference data look like, then validate every batch against it.

>>> import numpy as np
>>> from bastion.data.contracts import infer_contract, validate
>>> rng = np.random.default_rng(0)
>>> contract = infer_contract(rng.random((500, 1, 4, 4)).astype(np.float32), name="images")
>>> validate(rng.random((100, 1, 4, 4)).astype(np.float32), contract).ok
True
>>> report = validate(rng.random((3, 1, 5, 5)).astype(np.float32), contract)
>>> report.ok, [v.rule for v in report.violations]
(False, ['shape'])
"""

from bastion.data.contracts.infer import infer_contract
from bastion.data.contracts.io import (
    dump_contract,
    load_contract,
    load_data,
    parse_contract,
    save_contract,
)
from bastion.data.contracts.model import (
    ColumnSpec,
    Contract,
    ContractFailed,
    DriftTest,
    DuplicateGroup,
    Outlier,
    TableContract,
    TensorContract,
    ValidationReport,
    Violation,
)
from bastion.data.contracts.validate import validate

__all__ = [
    "ColumnSpec",
    "Contract",
    "ContractFailed",
    "DriftTest",
    "DuplicateGroup",
    "Outlier",
    "TableContract",
    "TensorContract",
    "ValidationReport",
    "Violation",
    "dump_contract",
    "infer_contract",
    "load_contract",
    "load_data",
    "parse_contract",
    "save_contract",
    "validate",
]
