"""Poisoned-sample detection: activation clustering, spectral signatures, confident learning
and STRIP, with a ground-truth evaluator and a repair step."""

from bastion.defences.data._activations import extract_activations, penultimate_layer
from bastion.defences.data.activation_clustering import ActivationClustering
from bastion.defences.data.base import PoisonDetector
from bastion.defences.data.spectral import SpectralSignatures

__all__ = [
    "ActivationClustering",
    "PoisonDetector",
    "SpectralSignatures",
    "extract_activations",
    "penultimate_layer",
]
