"""Other decoders of the latents: tiny autoencoders (``tiny``: TAESD as diffusers' ``AutoencoderTiny``) and
live previews (``preview``: a linear latent -> RGB map, the tiny VAE, or the full VAE)."""

from pathlib import Path

SHIPPED = "default-tiny-vae"  # the embedded model's tiny VAE, by name (its folder in weights/)


def resolve(path: str | Path) -> Path:
    """A tiny VAE's ``path``, or for the name ``"default-tiny-vae"`` (when no such file is here) the shipped one's
    folder. Torch-free: the server's settings check it."""
    p = Path(path)
    if str(path) == SHIPPED and not p.exists():
        from ..models.presets import data_dir

        return data_dir("weights") / SHIPPED
    return p
