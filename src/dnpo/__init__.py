"""Dynamic Noise Preference Optimization: LLM self-improvement on synthetic data."""

__version__ = "0.1.0"
