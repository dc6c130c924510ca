"""Other decoders of the latents: tiny autoencoders (``tiny``: TAESD as diffusers' ``AutoencoderTiny``) and
live previews (``preview``: a linear latent -> RGB map, the tiny VAE, or the full VAE)."""
