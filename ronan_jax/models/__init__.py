"""Flax (linen) architectures of the generators ronan-jax ships or converts to.

Linen is used because its modules are pure ``init``/``apply`` functions over explicit
parameter pytrees: exactly what the inversion engine's hot path wants.
"""
