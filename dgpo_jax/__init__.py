"""dgpo-jax: Distillation-Guided Policy Optimization (arXiv 2508.20324) in JAX/Flax NNX."""

__version__ = "0.1.0"
