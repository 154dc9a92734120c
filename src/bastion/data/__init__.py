"""Data loaders and, later, data contracts."""

from bastion.data.loaders import (
    Dataset,
    load_digits,
    load_labelled,
    load_mnist,
    load_npz,
    shared_mnist_dir,
)

__all__ = [
    "Dataset",
    "load_digits",
    "load_labelled",
    "load_mnist",
    "load_npz",
    "shared_mnist_dir",
]
