"""Comparing an exported model with the original: inputs, tolerances, metrics, parity, localisation."""
