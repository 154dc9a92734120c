"""Attacks: evasion, extraction, inference and poisoning."""
