"""SCCAN export: PyTorch -> split ONNX graphs -> TensorRT (see shared/docs/architecture.md)."""
