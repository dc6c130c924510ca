"""Larger pictures: the upscalers (``upscalers``: A1111's latent modes and pixel resamplers) and A1111's hires fix
(``hires``: draw at the base size, upscale, then redraw at the larger size from the upscaled picture)."""
