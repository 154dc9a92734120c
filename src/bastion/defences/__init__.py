"""Defences: training-time, input, output and data defences, and certification."""
