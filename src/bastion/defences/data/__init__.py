"""Poisoned-sample detection: activation clustering, spectral signatures, confident learning
and STRIP, with a ground-truth evaluator and a repair step."""

from bastion.defences.data._activations import extract_activations, penultimate_layer
from bastion.defences.data._split import ClassSplit
from bastion.defences.data.activation_clustering import ActivationClustering
from bastion.defences.data.base import PoisonDetector
from bastion.defences.data.confident_learning import ConfidentLearning, confident_joint
from bastion.defences.data.evaluate import DetectionScore, detection_score, evaluate_detectors
from bastion.defences.data.repair import RepairResult, repair
from bastion.defences.data.scan import MethodReport, PoisonScan, parse_methods, scan_poison
from bastion.defences.data.spectral import SpectralSignatures
from bastion.defences.data.strip import STRIP

__all__ = [
    "STRIP",
    "ActivationClustering",
    "ClassSplit",
    "ConfidentLearning",
    "DetectionScore",
    "MethodReport",
    "PoisonDetector",
    "PoisonScan",
    "RepairResult",
    "SpectralSignatures",
    "confident_joint",
    "detection_score",
    "evaluate_detectors",
    "extract_activations",
    "parse_methods",
    "penultimate_layer",
    "repair",
    "scan_poison",
]
