"""latentgen.embedded.autoencoder: the VAE stages' objective (bf16 autocast, the off-blend penalty, the edge
loss, the adversarial loss) on a tiny random VAE."""

import torch


def _tiny_vae():
    """A seeded two-level AutoencoderKL for 32x32 images, for the VAE objective's unit tests."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=4)


def test_vae_objective_under_bf16_autocast_is_close_to_fp32():
    """VAEObjective(autocast='bf16'): the same loss to bf16's precision, not bit for bit; fp32 gradients."""
    from latentgen.embedded.autoencoder import VAEObjective

    vae = _tiny_vae()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    full, half = (VAEObjective(vae, 1e-6, autocast=a)(pixels, torch.Generator().manual_seed(0)) for a in ("no", "bf16"))
    assert half.dtype == torch.float32 and full.item() != half.item()
    assert abs(full.item() - half.item()) < 0.02 * full.item()
    half.backward()
    assert vae.decoder.conv_out.weight.grad.dtype == torch.float32


class Echo(torch.nn.Module):
    """A 'VAE' whose decoder returns a fixed picture."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def encode(self, x):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
        return type("E", (), {"latent_dist": DiagonalGaussianDistribution(torch.zeros(1, 8, 1, 1))})()

    def decode(self, z):
        return type("D", (), {"sample": self.out})()


def test_the_edge_loss_pays_for_blur_not_for_an_offset():
    """VAEObjective(edge=w): w x the L1 distance of the output's pixel differences (down and across) from the
    input's. An output shifted by a constant has the input's edges (no extra cost); a blurred step pays."""
    from latentgen.embedded.autoencoder import VAEObjective

    pixels = torch.tensor([-1.0, -1.0, 1.0, 1.0]).view(1, 1, 1, 4).expand(1, 3, 4, 4)  # a vertical step edge
    shifted = pixels + 0.2
    blurred = torch.tensor([-1.0, -0.5, 0.5, 1.0]).view(1, 1, 1, 4).expand(1, 3, 4, 4)
    g = torch.Generator().manual_seed(0)
    loss = {(name, w): VAEObjective(Echo(out), 0.0, edge=w)(pixels, g)
            for name, out in (("shifted", shifted), ("blurred", blurred)) for w in (0.0, 2.0)}
    assert torch.allclose(loss["shifted", 0.0], loss["shifted", 2.0])
    # across: differences (0.5, 1, 0.5) against (0, 2, 0): mean (0.5 + 1 + 0.5) / 3 = 2/3; down: all 0
    expected = 2.0 * 2 / 3
    assert torch.allclose(loss["blurred", 2.0] - loss["blurred", 0.0], torch.tensor(expected))


def test_the_off_blend_penalty_counts_only_colors_off_the_line():
    """VAEObjective(line=w): pixels on the segment between the image's two colors cost nothing extra."""
    from latentgen.embedded.autoencoder import VAEObjective

    colors = torch.tensor([[[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]]])  # red shape, blue background
    pixels = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    blend = torch.tensor([0.0, -1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)  # halfway: on the line
    green = torch.tensor([0.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)  # off it by 1 in G
    g = torch.Generator().manual_seed(0)
    on = [VAEObjective(Echo(blend), 0.0, w)(pixels, g, colors) for w in (0.0, 5.0)]
    off = [VAEObjective(Echo(green), 0.0, w)(pixels, g, colors) for w in (0.0, 5.0)]
    assert torch.allclose(on[0], on[1]) and torch.allclose(off[1] - off[0], torch.tensor(5.0))


def test_the_adversarial_loss_reaches_each_side_alone_and_is_balanced():
    """VAEObjective(gan=w): the discriminator's hinge loss moves only the discriminator; the generator term moves
    only the decoder, with a gradient at its last layer of norm w x that of the reconstruction loss (Esser et al.
    2021, eq. 7); before ``gan_on`` the decoder trains exactly as without a discriminator."""
    from latentgen.embedded.autoencoder import VAEObjective

    vae = _tiny_vae()
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1

    def grads(objective, **kw):
        vae.zero_grad(set_to_none=True)
        objective.zero_grad(set_to_none=True)
        objective(pixels, torch.Generator().manual_seed(0), **kw).backward()
        return {k: p.grad.clone() for k, p in objective.named_parameters() if p.grad is not None}

    plain, adv = VAEObjective(vae, 0.0), VAEObjective(vae, 0.0, gan=0.5)
    g0, off, on = grads(plain), grads(adv, gan_on=False), grads(adv, gan_on=True)
    disc = [k for k in off if k.startswith("disc.")]
    assert disc and all(off[k].abs().sum() > 0 for k in disc)
    assert all(torch.allclose(off[k], g0[k], atol=1e-7) for k in g0)  # the hinge loss never reaches the decoder
    assert all(torch.allclose(on[k], off[k], atol=1e-7) for k in disc)  # the generator term never reaches D
    last = "vae.decoder.conv_out.weight"
    assert torch.allclose((on[last] - off[last]).norm(), 0.5 * g0[last].norm(), rtol=1e-3)
    assert all(torch.equal(p, q) for p, q in zip(VAEObjective(vae, 0.0, gan=0.5).disc.parameters(),
                                                 adv.disc.parameters()))  # the discriminator's init is seeded
