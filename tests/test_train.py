"""latentgen.train: the weighted diffusion loss, caption dropout, VAE posterior draws and per-step
generators, each a pure function of its seeds (so a resumed run draws what the uninterrupted one did)."""

import torch

from latentgen import train


def test_weighted_loss_is_the_weighted_sum():
    from diffusers import DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=2)
    sched, lat, hid = DDPMScheduler(), torch.randn(4, 4, 8, 8), torch.randn(4, 3, 8)
    mean = train.diffusion_loss(unet, hid, lat, sched, torch.Generator().manual_seed(0))
    even = train.diffusion_loss(unet, hid, lat, sched, torch.Generator().manual_seed(0), weights=torch.full((4,), 0.25))
    assert torch.allclose(mean, even)
    first = train.diffusion_loss(unet, hid, lat, sched, torch.Generator().manual_seed(0),
                                 weights=torch.tensor([1.0, 0, 0, 0]))
    assert not torch.allclose(first, mean)


def test_drop_captions_is_a_function_of_seed_step_micro_and_process():
    captions = [f"caption {i}" for i in range(200)]
    once = train.drop_captions(captions, 0.5, seed=3, step=7, micro=1, process=0)
    assert once == train.drop_captions(captions, 0.5, seed=3, step=7, micro=1, process=0)
    assert all(c in ("", captions[i]) for i, c in enumerate(once))
    for other in (dict(seed=4, step=7, micro=1, process=0), dict(seed=3, step=8, micro=1, process=0),
                  dict(seed=3, step=7, micro=0, process=0), dict(seed=3, step=7, micro=1, process=1)):
        assert train.drop_captions(captions, 0.5, **other) != once, other


def test_drop_captions_drops_about_p_of_them():
    captions = ["a red circle on a blue background"] * 2000
    dropped = train.drop_captions(captions, 0.3, seed=0, step=0).count("")
    assert 0.25 * 2000 <= dropped <= 0.35 * 2000, dropped
    for step in range(20):
        assert train.drop_captions(captions, 0.0, seed=0, step=step) == captions  # p=0: none dropped
    assert train.drop_captions(captions, 1.0, seed=0, step=0) == [""] * 2000  # p=1: all dropped


def test_sample_latents_is_the_mean_without_spread_and_reproducible():
    mean = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    std = torch.rand(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) + 0.1
    assert torch.equal(train.sample_latents(mean, torch.zeros_like(std), torch.Generator().manual_seed(5)), mean)
    a = train.sample_latents(mean, std, torch.Generator().manual_seed(5))
    b = train.sample_latents(mean, std, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == mean.shape and a.dtype == mean.dtype
    assert not torch.equal(a, mean)
    assert not torch.equal(a, train.sample_latents(mean, std, torch.Generator().manual_seed(6)))


def test_step_generator_depends_only_on_its_arguments():
    def draw(*args):
        return torch.randn(16, generator=train.step_generator(*args))

    assert torch.equal(draw(0, 5, 1, 0), draw(0, 5, 1, 0))
    for other in ((1, 5, 1, 0), (0, 6, 1, 0), (0, 5, 0, 0), (0, 5, 1, 1)):
        assert not torch.equal(draw(0, 5, 1, 0), draw(*other)), other
