"""difflab: denoising diffusion models you can read end to end and train for real."""

__version__ = "0.1.0"
