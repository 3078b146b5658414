"""The serving tests' fixtures live in ``tests/serving_fixtures.py`` (importable by the test modules)."""

from serving_fixtures import fixed_batch_onnx, served_onnx, server  # noqa: F401
