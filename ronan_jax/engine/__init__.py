"""The engine: batched, jit-compiled Adam inversion of a generator's input. JAX only.

It imports nothing from the rest of ronan_jax; everything above it (attribution, audit,
results, report, CLI, models) builds on its public names.
"""
