"""Comparing an exported model with the original: tolerances, metrics, parity, localisation, accuracy."""
