"""gemmapipe: Gemma 4 unified multimodal model from the shell."""

__version__ = "0.1.0"
