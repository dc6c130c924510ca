"""Calls that start from a picture (``calls``: img2img, inpainting, outpainting, the ``Pipeline`` methods) and the
picture's area before the model sees it, as AUTOMATIC1111 prepares it: img2img's resize modes (``resize``),
inpainting's masked content (``fill``) and outpainting's larger canvas (``outpaint``)."""
