"""streamr1: reward-weighted DMD distillation of streaming video diffusion models (Stream-R1, arXiv 2605.03849)."""

__version__ = "0.1.0"
