"""harness: reproducible, tracked image-classification experiments in PyTorch."""

__version__ = "0.1.0"
