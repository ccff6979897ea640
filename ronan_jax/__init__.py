"""ronan-jax: batched, jit-compiled RONAN origin attribution of AI-generated images."""

__version__ = "0.1.0"
