"""latentgen.models.ldm: the LDM names latentgen writes are the ones diffusers' readers (convert_ldm_*) invert
exactly."""


import pytest
import torch

from latentgen.models import ldm, loading


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return loading.load_components(tiny_folder)


def test_layout_is_what_diffusers_reads(tiny):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    for c in (tiny, loading.load_components(None)):  # tiny-random and the embedded model's architectures
        unet, vae = c.unet.state_dict(), c.vae.state_dict()
        back = convert_ldm_unet_checkpoint(ldm.unet_to_ldm(unet, c.unet.config), dict(c.unet.config))
        assert back.keys() == unet.keys() and all(torch.equal(back[k], unet[k]) for k in unet)
        back = convert_ldm_vae_checkpoint(ldm.vae_to_ldm(vae, c.vae.config), dict(c.vae.config))
        assert back.keys() == vae.keys() and all(torch.equal(back[k], vae[k]) for k in vae)
