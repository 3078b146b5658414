"""ONNX Runtime: sessions, ONNX file reading, the input data fed to them, runners and interleaved timing."""
