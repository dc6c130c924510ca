"""The embedded model's recipe settings (``latentgen train``), light to import (no torch): the command line builds
its flags from the fields."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import checks
from ..checks import option
from ..training.configs import LoopConfig


@dataclass
class RecipeConfig:
    out: Path = option(help="run folder: OUT/vae, OUT/diffusion, OUT/decoder, OUT/inpainting (checkpoints), "
                            "OUT/model and OUT/inpainting-model (the exports)")
    init: Path | None = option(None, "continue a trained model folder (RUN/model): stages 1-2 are not run, its VAE, "
                                     "text encoder and U-Net start stages 3-4")
    preset: str = option("default", "architecture and defaults, from pipelines/<preset>.json")
    seed: int = option(0, "seed of the init, the scenes and the noise")
    vae_steps: int = option(4500, "stage 1: VAE optimizer steps")
    vae_batch: int = option(32, "images per VAE (and decoder) step")
    vae_lr: float = option(1e-3, "stage 1 learning rate")
    kl_weight: float = option(1e-6, "weight of the VAE's KL term")
    vae_autocast: str = option("no", "bf16: the VAE stages (1 and 3) run encoder and decoder under bf16 autocast, "
                                     "weights and optimizer in fp32 (1.6x faster on a CPU with native bf16)",
                               choices=("no", "bf16"))
    vae_line: float = option(0.0, "stage 1 weight of the off-blend penalty (as --decoder-line), on encoder and decoder")
    vae_edge: float = option(0.0, "stage 1 weight of the gradient difference loss (as --decoder-edge): sharper edges")
    vae_open_colors: float = option(0.25, "fraction of VAE images in random RGB colors, so it encodes unseen ones")
    vae_open_shapes: float = option(0.15, "fraction of VAE images whose shape is any of shapes.ALL_SHAPES (star "
                                         "too): latents that keep shapes the captions never name, for LoRAs")
    plain: float = option(0.05, "fraction of VAE and decoder images that are one plain color, no shape: plain "
                               "areas decode true (no seam around an inpainted hole)")
    decoder_steps: int = option(600, "stage 3: decoder-only optimizer steps")
    decoder_lr: float = option(2e-4, "stage 3 learning rate")
    decoder_open_colors: float = option(0.25, "fraction of decoder images in random RGB colors")
    decoder_open_shapes: float = option(0.25, "fraction of decoder images whose shape is any of shapes.ALL_SHAPES "
                                             "(star too): the decoder learns to draw shapes the captions never name")
    decoder_line: float = option(4.0, "stage 3 weight of the off-blend penalty (pixels off the line between the "
                                      "image's two colors: rainbow specks)")
    decoder_edge: float = option(0.0, "stage 3 weight of the gradient difference loss (L1 of the output's "
                                      "pixel-to-pixel differences against the input's): sharper edges")
    decoder_gan: float = option(0.0, "stage 3 weight of the adversarial loss against a PatchGAN discriminator "
                                     "(times SD's adaptive balance; e.g. 0.5): edges MSE blurs come out sharp")
    decoder_gan_start: int = option(100, "stage 3 step from which the adversarial loss reaches the decoder (the "
                                         "discriminator trains from step 0)")
    steps: int = option(5000, "stage 2: U-Net + text encoder optimizer steps")
    inpaint_steps: int = option(3000, "stage 4: inpainting U-Net optimizer steps (0: no inpainting variant)")
    inpaint_lr: float = option(5e-4, "stage 4 learning rate")
    batch: int = option(32, "images per stage 2 step")
    lr: float = option(6e-4, "stage 2 learning rate")
    warmup: int = option(200, "stage 2 warmup steps")
    ema: float = option(0.0, "stage 2: decay of an exponential moving average of the U-Net and text encoder "
                             "weights, which are exported instead of the last ones (0: none; e.g. 0.999)")
    caption_dropout: float = option(0.1, "fraction of empty captions (the unconditional score CFG needs)")
    snr_gamma: float | None = option(5.0, "min-SNR-gamma weighting ('none': off)")
    save_every: int = option(250, "checkpoint every N steps")
    threads: int | None = option(None, "torch CPU threads (default: torch's)")

    def check(self) -> None:
        for name in ("vae_steps", "vae_batch", "decoder_steps", "steps", "batch", "save_every"):
            checks.whole(name, getattr(self, name), 1)
        checks.whole("inpaint_steps", self.inpaint_steps, 0)
        for name in ("vae_open_colors", "vae_open_shapes", "plain", "decoder_open_colors", "decoder_open_shapes"):
            checks.number(name, getattr(self, name), minimum=0, maximum=1)
        checks.number("decoder_line", self.decoder_line, minimum=0)
        checks.number("decoder_edge", self.decoder_edge, minimum=0)
        checks.number("decoder_gan", self.decoder_gan, minimum=0)
        checks.whole("decoder_gan_start", self.decoder_gan_start, 0)
        checks.number("vae_edge", self.vae_edge, minimum=0)
        checks.number("vae_line", self.vae_line, minimum=0)
        LoopConfig(out=self.out, steps=self.steps, lr=self.lr, ema=self.ema).check()  # stage 2's loop settings
        if self.init is not None and not (Path(self.init) / "model_index.json").is_file():
            raise FileNotFoundError(f"init={self.init} is no model folder: give RUN/model of an earlier run.")
        if not checks.number("caption_dropout", self.caption_dropout, minimum=0, maximum=1) < 1:
            raise ValueError("caption_dropout=1 is invalid: some captions must stay, use a value in [0, 1).")
        checks.check_choices(self)
        if self.threads is not None:
            checks.whole("threads", self.threads, 1)
