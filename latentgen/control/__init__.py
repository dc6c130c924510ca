"""ControlNet (Zhang et al. 2023, https://arxiv.org/abs/2302.05543): spatial control from an image. ``units``: what
a call asks for (``Control``) and the ControlNets it names; ``ldm_file``: ControlNets from lllyasviel's and A1111's
single files; ``residuals``: the loop's ``unet_inputs`` hook that adds their residuals to the U-Net's skip
connections, step by step."""
