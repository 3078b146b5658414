"""ONNX Runtime: sessions, ONNX file reading, runners and interleaved timing."""
