"""genguard: reproducible pipelines for generative-AI security research."""

__version__ = "0.1.0"
