"""The VAE stages of the recipe (``latentgen.embedded.recipe``): stage 1 trains the whole VAE, stage 3
the decoder alone; and the data both see: scenes as pure functions of their coordinates, as pixels.

VAE (Kingma & Welling 2014; Rombach et al. 2022, https://arxiv.org/abs/2112.10752, sec. 3):
(B, 3, 64, 64) in [-1, 1] -> posterior over (B, 4, 8, 8) latents -> (B, 3, 64, 64).
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F

from ..training import loop as train
from ..models.components import Components
from . import shapes


def data_spec(size: int) -> dict:
    """What the model sees, for the manifest."""
    return {"generator": "latentgen.shapes.random_scene", "size": size, "colors": list(shapes.COLORS),
            "shapes": list(shapes.SHAPES), "caption": "a {color} {shape} on a {background} background",
            "radius": "0.18-0.34 of the side", "held_out": ["purple", "star"]}


def scenes(seed: int, stage: str, step: int, micro: int, process: int, n: int, size: int,
           **vocab) -> list[shapes.Scene]:
    """The n scenes of one micro-batch: a pure function of its coordinates (resumable, shardable)."""
    rng = random.Random(f"{seed}:{stage}:{step}:{micro}:{process}")
    return [shapes.random_scene(rng, size, **vocab) for _ in range(n)]


def to_pixels(images) -> torch.Tensor:
    """PIL RGB images -> (B, 3, H, W) in [-1, 1]."""
    a = np.stack([np.asarray(im, np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


def from_pixels(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) float32 RGB, rounded to whole values in 0..255."""
    return ((x.detach().float().clamp(-1, 1).cpu().permute(0, 2, 3, 1).numpy() + 1) * 127.5).round()


class PatchDiscriminator(torch.nn.Module):
    """PatchGAN (Isola et al. 2017, https://arxiv.org/abs/1611.07004), the discriminator SD's autoencoders
    train against (Esser et al. 2021, https://arxiv.org/abs/2012.09841): (B, 3, 64, 64) -> (B, 1, 14, 14)
    logits, each judging a 34-px patch real or decoded. GroupNorm, not BatchNorm: no batch statistics."""

    def __init__(self, channels: int = 32, layers: int = 2):
        super().__init__()
        act, c = torch.nn.LeakyReLU(0.2), channels
        net = [torch.nn.Conv2d(3, c, 4, 2, 1), act]  # (B, c, 32, 32)
        for i in range(layers):  # stride 2, then 1: (B, 2c, 16, 16), (B, 4c, 15, 15); last conv: 14x14
            net += [torch.nn.Conv2d(c, 2 * c, 4, 2 if i < layers - 1 else 1, 1), torch.nn.GroupNorm(8, 2 * c), act]
            c *= 2
        self.net = torch.nn.Sequential(*net, torch.nn.Conv2d(c, 1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VAEObjective(torch.nn.Module):
    """Stages 1 and 3: reconstruct pixels through a sampled latent, KL toward N(0, I); with ``line`` > 0
    also the squared distance of each output pixel from the segment between its image's two colors
    (``colors`` (B, 2, 3)): MSE alone lets each channel err on its own at edges, and such errors are
    colors the image does not have (the rainbow specks ``shapes.off_palette`` counts). With ``edge`` > 0
    also the gradient difference loss (Mathieu et al. 2016, https://arxiv.org/abs/1511.05440): the L1
    distance of the output's pixel-to-pixel differences from the input's, which MSE's blur pays for.

    With ``gan`` > 0 a ``PatchDiscriminator`` trains beside the decoder (hinge loss), and the decoder also
    pays ``gan`` x lambda x its generator loss, lambda = |grad rec| / |grad gan| at the decoder's last layer
    (Esser et al. 2021, eq. 7), once ``gan_on``: MSE averages the edges it is unsure of into a blur, the
    discriminator does not accept a blur. One optimizer trains both: each loss reaches only its own side
    (the generator term sees the discriminator's weights detached, the discriminator sees ``rec`` detached).
    ``autocast='bf16'`` runs encoder and decoder under bf16 autocast; weights and the reconstruction loss stay
    fp32 (the KL term, weight ~1e-6, is taken from the bf16 posterior)."""

    def __init__(self, vae, kl_weight: float, line: float = 0.0, edge: float = 0.0, gan: float = 0.0,
                 seed: int = 0, autocast: str = "no"):
        super().__init__()
        self.vae, self.kl_weight, self.line, self.edge, self.gan = vae, kl_weight, line, edge, gan
        self.autocast = autocast == "bf16"  # encode and decode under bf16 autocast; MSE in fp32
        self.disc = None
        if gan:
            with torch.random.fork_rng():  # the discriminator's init is seeded, the global stream untouched
                torch.manual_seed(seed)
                self.disc = PatchDiscriminator()

    def forward(self, pixels: torch.Tensor, generator: torch.Generator, colors: torch.Tensor | None = None,
                gan_on: bool = True):
        with torch.autocast(pixels.device.type, torch.bfloat16, enabled=self.autocast):
            post = self.vae.encode(pixels).latent_dist  # mean/std (B, 4, h, w)
            z = train.sample_latents(post.mean.float(), post.std.float(), generator)
            rec = self.vae.decode(z).sample.float()  # (B, 3, H, W)
        loss = F.mse_loss(rec, pixels.float()) + self.kl_weight * post.kl().mean()
        if self.line:
            a, d = colors[:, 1, :, None, None], (colors[:, 0] - colors[:, 1])[:, :, None, None]  # (B, 3, 1, 1)
            t = (((rec - a) * d).sum(1, keepdim=True) / (d * d).sum(1, keepdim=True).clamp_min(1e-6)).clamp(0, 1)
            loss = loss + self.line * ((rec - a - t * d) ** 2).sum(1).mean()
        for dim in (2, 3) if self.edge else ():  # differences down and across, (B, 3, H-1, W) and (B, 3, H, W-1)
            loss = loss + self.edge * (rec.diff(dim=dim) - pixels.float().diff(dim=dim)).abs().mean()
        if self.disc is not None:
            loss = loss + self.adversarial(loss, rec, pixels.float(), gan_on)
        return loss

    def adversarial(self, rec_loss: torch.Tensor, rec: torch.Tensor, real: torch.Tensor, gan_on: bool):
        """The discriminator's hinge loss, plus (``gan_on``) the decoder's weighted generator loss."""
        d = (F.relu(1 - self.disc(real)).mean() + F.relu(1 + self.disc(rec.detach())).mean())
        if not (gan_on and rec.requires_grad):
            return d
        frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
        g = -torch.func.functional_call(self.disc, frozen, (rec,)).mean()
        last = self.vae.decoder.conv_out.weight
        grad_rec, = torch.autograd.grad(rec_loss, last, retain_graph=True)
        grad_g, = torch.autograd.grad(g, last, retain_graph=True)
        lam = (grad_rec.norm() / (grad_g.norm() + 1e-4)).clamp(0, 1e4).detach()
        return d + self.gan * lam * g


def pixel_batches(cfg, stage: str, size: int, open_colors: float, open_shapes: float = 0.0, plain: float = 0.0,
                  gan_start: int | None = None):
    """``batch_fn`` of the VAE stages: scenes, a fraction ``open_colors`` of them in random RGB colors, a
    fraction ``open_shapes`` of them redrawn with any shape (``shapes.ALL_SHAPES``: the star too), and a
    fraction ``plain`` of them the background alone: a VAE that never sees a plain frame decodes one tens
    of RGB off (green 54), which shows as a seam around an inpainted hole. With ``gan_start``, the batch
    also says whether the decoder's adversarial term is on (from that step; the discriminator trains from 0)."""
    from PIL import Image

    def batch_fn(step, micro, a):
        batch = scenes(cfg.seed, stage, step, micro, a.process_index, cfg.vae_batch, size)
        if open_shapes:  # its own stream: open_shapes=0 leaves every other draw as it was
            srng = random.Random(f"{cfg.seed}:{stage}-shapes:{step}:{micro}:{a.process_index}")
            batch = [shapes.random_scene(srng, size, shapes=shapes.ALL_SHAPES) if srng.random() < open_shapes else s
                     for s in batch]
        tag = "open" if stage == "vae" else f"{stage}-open"
        rng = random.Random(f"{cfg.seed}:{tag}:{step}:{micro}:{a.process_index}")  # its own stream
        rgb = [None] * len(batch)
        if open_colors:
            rgb = [tuple(tuple(rng.randrange(256) for _ in range(3)) for _ in range(2))
                   if rng.random() < open_colors else None for _ in batch]
        pairs = [c or (shapes.PALETTE[s.color], shapes.PALETTE[s.background]) for s, c in zip(batch, rgb)]
        prng = random.Random(f"{cfg.seed}:{stage}-plain:{step}:{micro}:{a.process_index}")  # its own stream
        flat = [plain > 0 and prng.random() < plain for _ in batch]
        imgs = [Image.new("RGB", (size, size), p[1]) if f else shapes.draw(s, size, c)
                for s, c, p, f in zip(batch, rgb, pairs, flat)]
        pairs = [(p[1], p[1]) if f else p for p, f in zip(pairs, flat)]  # a plain frame has one color
        batch = {"pixels": to_pixels(imgs).to(a.device), "colors": torch.tensor(pairs).to(a.device) / 127.5 - 1,
                 "generator": train.step_generator(cfg.seed, step, micro, a.process_index)}
        return batch if gan_start is None else {**batch, "gan_on": step >= gan_start}
    return batch_fn


def train_vae(cfg, c: Components, run_id: dict) -> None:
    """Stage 1: the whole VAE; then its ``scaling_factor`` (1 / std of the latents)."""
    from accelerate import Accelerator

    acc = Accelerator()  # one per stage: each checkpoint holds its own stage's model and optimizer
    size = c.defaults.width
    vae = c.vae.requires_grad_(True)
    train.run(train.LoopConfig(out=cfg.out / "vae", steps=cfg.vae_steps, lr=cfg.vae_lr, warmup=100,
                               lr_schedule="cosine", seed=cfg.seed, save_every=cfg.save_every),
              VAEObjective(vae, cfg.kl_weight, cfg.vae_line, cfg.vae_edge, autocast=cfg.vae_autocast),
              pixel_batches(cfg, "vae", size, cfg.vae_open_colors, cfg.vae_open_shapes, cfg.plain),
              run_id=run_id, accelerator=acc, desc="vae")
    vae = vae.requires_grad_(False).eval().to(acc.device)
    vae.register_to_config(scaling_factor=measure_scaling_factor(vae, cfg.seed, size))


def train_decoder(cfg, c: Components, run_id: dict):
    """Stage 3: the VAE decoder alone (the encoder, hence the latents the U-Net learned, stay fixed)."""
    from accelerate import Accelerator

    acc = Accelerator()
    size, vae = c.defaults.width, c.vae
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    train.run(train.LoopConfig(out=cfg.out / "decoder", steps=cfg.decoder_steps, lr=cfg.decoder_lr, warmup=20,
                               lr_schedule="cosine", seed=cfg.seed, save_every=cfg.save_every),
              VAEObjective(vae, cfg.kl_weight, cfg.decoder_line, cfg.decoder_edge, cfg.decoder_gan, cfg.seed,
                           cfg.vae_autocast),
              pixel_batches(cfg, "decoder", size, cfg.decoder_open_colors, cfg.decoder_open_shapes, cfg.plain,
                            cfg.decoder_gan_start if cfg.decoder_gan else None),
              run_id=run_id, accelerator=acc, desc="decoder")
    vae.requires_grad_(False).eval()
    return acc


@torch.no_grad()
def measure_scaling_factor(vae, seed: int, size: int, n: int = 512) -> float:
    """1 / std of the VAE's latents over n fresh scenes (SD measured 0.18215 the same way)."""
    imgs = [shapes.draw(s, size) for s in scenes(seed, "scale", 0, 0, 0, n, size)]
    z = torch.cat([vae.encode(to_pixels(imgs[i:i + 64]).to(vae.device)).latent_dist.mean
                   for i in range(0, n, 64)])
    return round(1.0 / z.float().std().item(), 5)
