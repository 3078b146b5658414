"""Exporting a lowered network to ONNX, stage by stage."""
