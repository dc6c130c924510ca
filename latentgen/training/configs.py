"""The trainers' settings as dataclasses, light to import (no torch): the command line builds each trainer's flags
from its fields (``option``'s help and choices), and each ``check()`` refuses a bad value, naming the field and a
fix, before any model loads. The trainers themselves (``loop``, ``finetune``, ``consistency``, ``controlnet``,
``tiny_vae``) import these names from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import checks
from ..checks import option
from . import samples
from .kohya_options import CaptionOptions, ImageOptions, LossOptions, NetworkOptions, OptimizerOptions

SD_TIMESTEPS = 1000  # T of the SD family's schedulers; the model's own T is checked again once it loads


def check_solver_steps(num_train: int, n: int) -> None:
    """N, the DDIM solver's steps of LCM distillation, must divide the T training timesteps."""
    checks.whole("num_ddim_timesteps", n, 1, f"use a whole number that divides {num_train}, such as 50")
    if num_train % n:
        raise ValueError(f"num_ddim_timesteps={n} is invalid: it must divide the model's {num_train} training "
                         f"timesteps (so at most {num_train}), such as 50 (--num-ddim-timesteps).")


@dataclass
class LoopConfig:
    out: Path  # run folder; checkpoints go in out/checkpoints
    steps: int  # optimizer steps
    lr: float = 1e-4
    lr_schedule: str = "constant"  # any diffusers.optimization schedule: constant, cosine, linear, ...
    warmup: int = 0
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2
    seed: int = 0
    save_every: int = 500
    keep: int = 2  # checkpoints kept
    mixed_precision: str = "no"  # no, fp16, bf16
    ema: float = 0.0  # decay of an EMA of the weights, which the model holds at the end (0: none)
    optimizer: type | None = None  # its class (``OptimizerOptions.optimizer_class``), None: AdamW
    optimizer_kwargs: dict = field(default_factory=dict)  # beside lr and weight_decay

    def check(self) -> None:
        for name in ("steps", "grad_accum", "save_every", "keep"):
            checks.whole(name, getattr(self, name), 1)
        checks.number("lr", self.lr, positive=True, fix="use a positive learning rate such as 1e-4")
        fix = "use a decay in [0, 1) such as 0.999, or 0 for no EMA"
        if checks.number("ema", self.ema, minimum=0, maximum=1, fix=fix) == 1:
            raise ValueError(f"ema={self.ema!r} is invalid: {fix}.")


@dataclass
class FolderRunOptions:
    """What the trainers of a new model beside the base (distill-vae, train-controlnet) share: data, run folder,
    base model, the output's name, batches, optimizer and checkpoints. Each sets its own defaults."""
    data: Path = option(help="folder of images (with captions where the trainer reads them)")
    out: Path = option(help="run folder: <name>/ (the trained model, a diffusers folder), checkpoints/")
    model: str | None = option(None, "base model: diffusers folder or preset (default: the embedded model)")
    name: str = option("model", "folder name of the result (<out>/<name>/)")
    steps: int = option(2000, "optimizer steps")
    batch: int = option(16, "images per process and micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr: float = option(1e-4, "learning rate")
    warmup: int = option(0, "warmup steps")
    resolution: int | None = option(None, "training size (default: the model's width)")
    crop: str = option("center", "center: resize the shorter side, crop; resize: stretch", choices=("center", "resize"))
    mixed_precision: str = option("no", "autocast dtype", choices=("no", "fp16", "bf16"))
    seed: int = option(0, "seed of the init, data order and draws")
    save_every: int = option(250, "checkpoint (and write <out>/<name>/) every N steps")
    resume: bool = option(False, "continue the run in --out from its last checkpoint")

    def check(self) -> None:
        for n in ("steps", "batch", "grad_accum", "save_every"):
            checks.whole(n, getattr(self, n), 1)
        checks.whole("warmup", self.warmup, 0)
        checks.number("lr", self.lr, positive=True, fix="use a positive learning rate such as 1e-4")
        if "/" in self.name or "\\" in self.name or self.name in ("", ".", "..", "checkpoints"):
            raise ValueError(f"name={self.name!r} is invalid: use a plain folder name such as 'edges'.")
        checks.check_choices(self)


@dataclass
class LoraOptions(CaptionOptions, OptimizerOptions):
    """The options of every LoRA trainer here (finetune-lora, distill-lcm): data, run folder, adapters,
    optimizer, batches, checkpoints, validation grids and output files."""
    data: Path = option(help="folder of images with .txt captions, or with a metadata.jsonl")
    out: Path = option(help="run folder: <name>.safetensors, checkpoints/, samples/")
    model: str | None = option(None, "base model: diffusers folder or preset (default: the embedded model)")
    name: str = option("lora", "file name of the LoRA (<out>/<name>.safetensors)")
    rank: int = option(8, "LoRA rank")
    alpha: float | None = option(None, "LoRA alpha (default: the rank)")
    conv_rank: int = option(0, "LoCon: also adapt the U-Net's 3x3 convolutions (ResNet blocks, down/up-samplers) "
                               "at this rank, as kohya's conv_dim; 0: attention only")
    conv_alpha: float | None = option(None, "alpha of the convolution adapters (default: conv_rank)")
    network_weights: Path | None = option(None, "go on training this LoRA file: its modules, ranks, alphas and "
                                                "weights (kohya's --network_weights with --dim_from_weights)")
    lr: float = option(1e-4, "learning rate")
    lr_schedule: str = option("constant", "constant, cosine, linear, constant_with_warmup, ... (diffusers.optimization)")
    warmup: int = option(0, "warmup steps")
    steps: int | None = option(None, "optimizer steps (or give --epochs)")
    epochs: float | None = option(None, "passes over the data, all processes together (or give --steps)")
    batch: int = option(4, "images per process and micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    resolution: int | None = option(None, "training size (default: the model's width)")
    crop: str = option("center", "center: resize the shorter side, crop; resize: stretch", choices=("center", "resize"))
    mixed_precision: str = option("no", "autocast dtype", choices=("no", "fp16", "bf16"))
    gradient_checkpointing: bool = option(False, "trade compute for memory")
    default_caption: str | None = option(None, "caption for images that have none (else: an error)")
    unet_lr: float | None = option(None, "the U-Net adapters' learning rate (default: --lr; kohya's --unet_lr)")
    text_encoder_lr: float | None = option(None, "the text encoder adapters' learning rate (default: --lr; "
                                                 "kohya's --text_encoder_lr)")
    seed: int = option(0, "seed of the adapters' init, data order, noise")
    save_every: int = option(100, "checkpoint every N steps")
    validate_every: int | None = option(None, "draw the sample prompts every N steps (kohya's sample_every_n_steps)")
    validate_every_epochs: int | None = option(None, "or every N passes over the data (kohya's "
                                                     "sample_every_n_epochs)")
    validation_prompts: list[str] = option([], "a sample prompt, with kohya's options after it: 'a red circle --w 256 "
                                               "--d 1 --s 20' (repeatable)", flag="validation-prompt")
    sample_prompts: Path | None = option(None, "kohya's sample prompt file (.txt lines as --validation-prompt's, "
                                               ".json or .toml), drawn with the validation prompts")
    sample_at_first: bool = option(False, "also draw the sample prompts before the first step (kohya's)")
    sample_sampler: str | None = option(None, "the sampler of the sample prompts that name none (kohya's "
                                              "--sample_sampler: its names or latentgen's; default: the model's)")
    kohya: bool = option(False, "also write <name>.kohya.safetensors (kohya/A1111 layout)")
    resume: bool = option(False, "continue the run in --out from its last checkpoint")

    def alphas(self) -> tuple[float, float]:
        """(alpha, conv_alpha), each defaulting to its rank."""
        return float(self.alpha or self.rank), float(self.conv_alpha or self.conv_rank)

    def check(self) -> None:
        checks.whole("rank", self.rank, 1, "use a whole number >= 1, such as rank=8")
        checks.whole("conv_rank", self.conv_rank, 0, "use a whole number >= 0, such as conv_rank=8 (0: none)")
        for n, rank in (("alpha", "rank"), ("conv_alpha", "conv_rank")):
            if getattr(self, n) is not None:
                checks.number(n, getattr(self, n), positive=True, fix=f"use a positive number (default: {rank})")
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps=... or epochs=... (--steps, --epochs), such as steps=500.")
        if self.steps is not None:
            checks.whole("steps", self.steps, 1)
        if self.epochs is not None:
            checks.number("epochs", self.epochs, positive=True)
        for n in ("batch", "grad_accum", "save_every"):
            checks.whole(n, getattr(self, n), 1)
        checks.check_choices(self)
        self.check_captions()
        self.check_start()
        self.check_optimizer()
        samples.check_options(self)

    def check_start(self) -> None:
        """A LoRA to start from exists, and nothing says other adapters."""
        if self.network_weights is None:
            return
        if not Path(self.network_weights).is_file():
            raise FileNotFoundError(f"network_weights={str(self.network_weights)!r} does not exist: give a LoRA file "
                                    f"to go on training, or leave it out.")
        for n in ("alpha", "conv_alpha", "conv_rank"):
            if getattr(self, n):  # None, or conv_rank 0: not given
                raise ValueError(f"{n} is read from network_weights (its ranks and alphas): leave it out.")

    def check_captions(self) -> None:
        """The caption options (``kohya_options``) and the per-part learning rates."""
        self.check_dataset()
        for n in ("unet_lr", "text_encoder_lr"):
            if getattr(self, n) is not None:
                checks.number(n, getattr(self, n), positive=True, fix="use a positive learning rate such as 1e-4")
        if self.text_encoder_lr is not None and not getattr(self, "train_text_encoder", False):
            raise ValueError("text_encoder_lr is the text encoder adapters' learning rate, and no text encoder is "
                             "trained: add train_text_encoder=True (--train-text-encoder), or leave it out.")

    def learning_rate(self, parameter: str) -> float:
        """The learning rate of a trainable parameter, by its name in the objective (``text_encoder...``: the text
        encoders' adapters)."""
        own = self.text_encoder_lr if parameter.startswith("text_encoder") else self.unet_lr
        return self.lr if own is None else own

    def sample_step(self, step: int, per_step: int, n_images: int) -> bool:
        """Whether the sample images are drawn after ``step`` (0: before the first), each step taking ``per_step``
        of the ``n_images`` data images: every ``validate_every`` steps, or at the step that completes every
        ``validate_every_epochs``-th pass over the data."""
        if step == 0:
            return self.sample_at_first
        if self.validate_every_epochs:
            return (step * per_step // n_images // self.validate_every_epochs
                    > (step - 1) * per_step // n_images // self.validate_every_epochs)
        return bool(self.validate_every) and step % self.validate_every == 0


@dataclass
class LoraTrainConfig(LoraOptions, ImageOptions, LossOptions, NetworkOptions):
    """finetune-lora: the shared options, plus the denoising loss's and prior preservation's."""
    train_text_encoder: bool = option(False, "also put adapters on the text encoder")
    clip_skip: int = option(1, "train on the text encoder's states N layers from its end, to draw with A1111's "
                               "Clip skip N (kohya's --clip_skip; SD 1.x/2.x)")
    caption_dropout: float = option(0.0, "fraction of captions dropped (trains the unconditional score)")
    prior_data: Path | None = option(None, "captioned images of what the model should keep drawing "
                                           "(kohya's reg images, DreamBooth's prior preservation)")
    prior_prompts: list[str] = option([], "the base model draws --prior-images images of these prompts into "
                                          "--prior-data (repeatable)", flag="prior-prompt")
    prior_images: int = option(100, "how many prior images are drawn (prompts cycled, seeds seed+i)")
    prior_weight: float = option(1.0, "loss = loss(data) + prior_weight * loss(prior)")

    def check(self) -> None:
        super().check()
        checks.whole("prior_images", self.prior_images, 1)
        checks.whole("clip_skip", self.clip_skip, 1, "use 1 (the last layer) or 2, as the model is drawn")
        checks.number("prior_weight", self.prior_weight, positive=True, fix="use a positive number such as 1.0")
        checks.number("caption_dropout", self.caption_dropout, minimum=0, maximum=1)
        if self.prior_prompts and self.prior_data is None:
            raise ValueError("prior_prompts need prior_data=FOLDER (--prior-data), where the drawn images go.")
        self.check_buckets()
        self.check_loss()
        self.check_network(self.network_weights)
        if self.enable_bucket and self.prior_data is not None:
            raise ValueError("enable_bucket with prior_data is not supported yet: prior images pair with each data "
                             "image in a batch, and a bucket's batch has one size; train without one of them.")


@dataclass
class LcmDistillConfig(LoraOptions):
    """distill-lcm: the LoRA trainer's options (data, adapters, optimizer, batches, checkpoints, files) and the
    distillation's."""
    name: str = option("lcm", "file name of the LoRA (<out>/<name>.safetensors)")
    num_ddim_timesteps: int = option(50, "N, the DDIM solver's steps over the T training timesteps, each skipping "
                                         "T/N (the lcm sampler's original_inference_steps: keep 50 to draw with it)")
    w_min: float | None = option(None, "lowest teacher guidance, a scale as --guidance's (default: the model's)")
    w_max: float | None = option(None, "highest teacher guidance (default: twice the model's guidance)")
    huber_c: float = option(0.001, "c of the pseudo-Huber loss sqrt(d^2 + c^2) - c")
    timestep_scaling: float = option(10.0, "s of the boundary conditions at s*t (the lcm sampler's 10: keep it "
                                           "to draw with it)")

    def check(self) -> None:
        super().check()
        if not Path(self.data).is_dir():
            raise ValueError(f"data={str(self.data)!r} is not a folder: pass a folder of images with .txt captions "
                             f"(or a metadata.jsonl), or write the embedded world's with `latentgen shapes-data "
                             f"{self.data} -n 300`.")
        check_solver_steps(SD_TIMESTEPS, self.num_ddim_timesteps)
        for n in ("w_min", "w_max"):
            if getattr(self, n) is not None:
                checks.number(n, getattr(self, n), minimum=0, fix="use a guidance scale >= 0, such as 4")
        if self.w_min is not None and self.w_max is not None and self.w_min > self.w_max:
            raise ValueError(f"w_min={self.w_min} is above w_max={self.w_max}: give w_min <= w_max (--w-min, "
                             f"--w-max), such as w_min=4 w_max=8.")
        checks.number("huber_c", self.huber_c, positive=True, fix="use a small positive number such as 0.001")
        checks.number("timestep_scaling", self.timestep_scaling, positive=True, fix="use 10, the lcm sampler's")

    def guidance_range(self, default: float) -> tuple[float, float]:
        """(w_min, w_max) with the model's default guidance g filling what is not given: [g, 2g], kept ordered
        around the end that is given."""
        lo = default if self.w_min is None else self.w_min
        hi = 2 * default if self.w_max is None else self.w_max
        return (float(min(lo, hi)), float(hi)) if self.w_min is None else (float(lo), float(max(lo, hi)))


@dataclass
class ControlNetTrainConfig(FolderRunOptions):
    """train-controlnet: the shared options (``captioned.FolderRunOptions``), the control maps, caption dropout."""
    data: Path = option(help="folder of images with .txt captions, or with a metadata.jsonl")
    name: str = option("controlnet", "folder name of the ControlNet (<out>/<name>/)")
    preprocessor: str = option("canny", "makes each image's control map (latentgen.control.preprocess)")
    controls: Path | None = option(None, "a folder of control maps named as the images (instead of --preprocessor)")
    caption_dropout: float = option(0.5, "fraction of captions dropped (the paper's 50%)")

    def check(self) -> None:
        from ..control.preprocess import name_of

        super().check()
        checks.number("caption_dropout", self.caption_dropout, minimum=0, maximum=1)
        name_of(self.preprocessor)
        if self.controls is not None and not Path(self.controls).is_dir():
            raise FileNotFoundError(f"controls={str(self.controls)!r} is not a folder: give a folder of control maps "
                                    f"named as the images, or leave it out to make them with --preprocessor.")


@dataclass
class TinyVaeConfig(FolderRunOptions):
    """distill-vae: the shared options (``captioned.FolderRunOptions``) and the tiny VAE's size."""
    data: Path = option(help="folder of images (captions are not needed)")
    name: str = option("taesd", "folder name of the tiny VAE (<out>/<name>/)")
    steps: int = option(1500, "optimizer steps")
    lr: float = option(1e-3, "learning rate (cosine schedule)")
    warmup: int = option(50, "warmup steps")
    channels: int = option(64, "channels at every level (TAESD's 64)")

    def check(self) -> None:
        checks.whole("channels", self.channels, 4, "use a whole number >= 4, such as 64 (TAESD's)")
        super().check()
