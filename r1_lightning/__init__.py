"""r1-lightning: DeepSeek-R1's reinforcement-learning recipe on PyTorch Lightning."""

__version__ = "0.1.0"
