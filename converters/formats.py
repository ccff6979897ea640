"""The source formats ``ronan convert`` reads (importable without torch)."""

FORMATS: tuple[str, ...] = ("dcgan", "sd-vae", "diffusers-unet", "consistency")
