"""The command line (``cli``), the benchmark harness (``bench``) and the exporters to PyTorch and
ONNX: users of the public API."""
