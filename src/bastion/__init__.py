"""Bastion: attack, harden, guard and secure machine-learning models."""

__version__ = "0.1.0"
