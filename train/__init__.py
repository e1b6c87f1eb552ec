"""SCCAN training side (PyTorch): the model, checkpoints, and (later) data, training and evaluation."""
