"""Input defences: adversarial-input and out-of-distribution detectors, input purifiers, and
their adaptive evaluation (BPDA, EOT).

Every defence here is evaluated with adaptive attacks by :func:`evaluate_input_defence`, so
that a defence that only masks gradients is reported as weak.
"""

from bastion.defences.input.adaptive import (
    BPDA,
    EOT,
    adaptive_classifier,
    bpda,
    bpda_classifier,
    detector_aware_classifier,
    eot_classifier,
)
from bastion.defences.input.base import (
    InputDetector,
    PreprocessedClassifier,
    Preprocessor,
    conformal_threshold,
)
from bastion.defences.input.evaluate import InputDefenceReport, evaluate_input_defence
from bastion.defences.input.jpeg import JPEGCompression, jpeg_compress, quantisation_table
from bastion.defences.input.noise import GaussianNoise
from bastion.defences.input.ood import EnergyDetector, MahalanobisDetector, auroc
from bastion.defences.input.squeezing import (
    BitDepth,
    FeatureSqueezing,
    MedianFilter,
    bit_depth_reduce,
    median_filter,
)

__all__ = [
    "BPDA",
    "EOT",
    "BitDepth",
    "EnergyDetector",
    "FeatureSqueezing",
    "GaussianNoise",
    "InputDefenceReport",
    "InputDetector",
    "JPEGCompression",
    "MahalanobisDetector",
    "MedianFilter",
    "PreprocessedClassifier",
    "Preprocessor",
    "adaptive_classifier",
    "auroc",
    "bit_depth_reduce",
    "bpda",
    "bpda_classifier",
    "conformal_threshold",
    "detector_aware_classifier",
    "eot_classifier",
    "evaluate_input_defence",
    "jpeg_compress",
    "median_filter",
    "quantisation_table",
]
