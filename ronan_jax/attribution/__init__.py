"""The method after the engine: calibration by a reference model, belonging profiles and
Grubbs' test, in NumPy. ``profile`` and ``grubbs`` never import JAX."""
