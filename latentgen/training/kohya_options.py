"""kohya's options of the LoRA trainers, light to import (no torch), as ``configs``: how captions are read and
shuffled (``CaptionOptions``: finetune-lora and distill-lcm), how images are drawn (``ImageOptions``: aspect-ratio
buckets and mirroring), the denoising loss's noise and weights (``LossOptions``, ``latentgen.training.noise``) and
the adapters' kind (``NetworkOptions``: LyCORIS's algo, DoRA; these three finetune-lora), and the optimizer
(``OptimizerOptions``: both). Keyword-only fields, so the trainers' configs can take them in beside their own
required ones."""

from __future__ import annotations

import ast
import importlib
import inspect
from dataclasses import dataclass

from .. import checks
from ..checks import option


@dataclass(kw_only=True)
class CaptionOptions:
    caption_extension: str = option(".txt", "the caption files' extension (kohya's --caption_extension)")
    shuffle_caption: bool = option(False, "shuffle each caption's comma-separated tags at every draw (kohya's)")
    keep_tokens: int = option(0, "the first N tags stay in place (kohya's --keep_tokens)")
    caption_tag_dropout: float = option(0.0, "drop each tag after the kept ones with this probability (kohya's "
                                             "--caption_tag_dropout_rate)")

    def check_dataset(self) -> None:
        """The caption file extension and kohya's tag options."""
        if not (isinstance(self.caption_extension, str) and self.caption_extension.startswith(".")
                and len(self.caption_extension) > 1 and "/" not in self.caption_extension):
            raise ValueError(f"caption_extension={self.caption_extension!r} is invalid: use a file extension with its "
                             f"dot, such as '.txt' or '.caption'.")
        checks.whole("keep_tokens", self.keep_tokens, 0, "use a whole number of tags >= 0, such as 1")
        checks.number("caption_tag_dropout", self.caption_tag_dropout, minimum=0, maximum=1)
        if self.keep_tokens and not (self.shuffle_caption or self.caption_tag_dropout):
            raise ValueError("keep_tokens keeps tags in place while the others are shuffled or dropped: add "
                             "shuffle_caption=True (--shuffle-caption) or caption_tag_dropout, or leave it out.")


@dataclass(kw_only=True)
class ImageOptions:
    enable_bucket: bool = option(False, "aspect-ratio buckets: each image at the bucket size nearest its shape, "
                                        "each batch one bucket's (kohya's --enable_bucket)")
    min_bucket_reso: int | None = option(None, "the buckets' smallest side (default: half the resolution, kohya's "
                                               "256 at 512)")
    max_bucket_reso: int | None = option(None, "the buckets' largest side (default: twice the resolution)")
    bucket_reso_steps: int | None = option(None, "bucket sides are multiples of this (default: an eighth of the "
                                                 "resolution, kohya's 64 at 512)")
    bucket_no_upscale: bool = option(False, "no predefined buckets: each image at its own size rounded down to "
                                            "bucket_reso_steps, never enlarged, shrunk to the resolution's area "
                                            "if larger (kohya's --bucket_no_upscale)")
    flip_aug: bool = option(False, "half the draws of each image see it mirrored left-right, encoded once each "
                                   "way (kohya's --flip_aug; not for pictures whose sides matter, such as text)")

    def check_buckets(self) -> None:
        sides = [n for n in ("min_bucket_reso", "max_bucket_reso", "bucket_reso_steps") if getattr(self, n) is not None]
        for n in sides:
            checks.whole(n, getattr(self, n), 1, f"use a whole number of pixels, such as {n}=64")
        given = sides + (["bucket_no_upscale"] if self.bucket_no_upscale else [])
        if given and not self.enable_bucket:
            raise ValueError(f"{given[0]} shapes the aspect-ratio buckets: add enable_bucket=True (--enable-bucket), "
                             f"or leave it out.")

    def bucket_sides(self, res: int, multiple: int) -> tuple[int, int, int]:
        """(smallest side, largest side, step) of the buckets at training resolution ``res``; ``multiple``: what
        every side must be a multiple of (the VAE's factor). ValueError names a setting that does not fit."""
        low = self.min_bucket_reso or res // 2
        high = self.max_bucket_reso or res * 2
        step = self.bucket_reso_steps or max(multiple, res // 8 // multiple * multiple)
        if step % multiple:
            raise ValueError(f"bucket_reso_steps={step} is invalid: use a multiple of the VAE's factor {multiple}, "
                             f"such as {max(multiple, step // multiple * multiple)}.")
        if not low <= res <= high:
            raise ValueError(f"min_bucket_reso={low} and max_bucket_reso={high} must hold the resolution {res} "
                             f"between them.")
        return low, high, step


@dataclass(kw_only=True)
class LossOptions:
    snr_gamma: float | None = option(None, "min-SNR-gamma weighting, e.g. 5 (kohya's --min_snr_gamma)")
    noise_offset: float = option(0.0, "offset noise, e.g. 0.05 (kohya's --noise_offset)")
    adaptive_noise_scale: float | None = option(None, "the offset grows by this times each channel's |mean| latent, "
                                                      "e.g. 0.01 (kohya's; needs noise_offset)")
    multires_noise_iterations: int = option(0, "multi-resolution (pyramid) noise of this many levels, e.g. 6 "
                                               "(kohya's --multires_noise_iterations)")
    multires_noise_discount: float = option(0.3, "each level's weight is this to its depth (kohya's "
                                                 "--multires_noise_discount)")
    ip_noise_gamma: float = option(0.0, "input perturbation: the noised input gets this much more noise, the "
                                        "target not, e.g. 0.1 (kohya's --ip_noise_gamma)")
    debiased_estimation: bool = option(False, "weigh each timestep's loss by 1/sqrt(SNR) (kohya's "
                                              "--debiased_estimation_loss)")

    def check_loss(self) -> None:
        """Each option in its range; the offsets' pair and the noise kinds that exclude each other."""
        if self.snr_gamma is not None:
            checks.number("snr_gamma", self.snr_gamma, positive=True, fix="use a positive number such as 5")
        for n in ("noise_offset", "ip_noise_gamma"):
            checks.number(n, getattr(self, n), minimum=0, fix=f"use a small number >= 0, such as {n}=0.1 (0: off)")
        if self.adaptive_noise_scale is not None:
            checks.number("adaptive_noise_scale", self.adaptive_noise_scale, fix="use a small number such as 0.01")
            if not self.noise_offset:
                raise ValueError("adaptive_noise_scale scales the offset noise: add noise_offset (--noise-offset), "
                                 "such as 0.05, or leave it out.")
        checks.whole("multires_noise_iterations", self.multires_noise_iterations, 0,
                     "use a whole number >= 0, such as 6 (0: off)")
        checks.number("multires_noise_discount", self.multires_noise_discount, positive=True, maximum=1,
                      fix="use a number in (0, 1], such as 0.3")
        if self.noise_offset and self.multires_noise_iterations:
            raise ValueError("noise_offset and multires_noise_iterations are two kinds of low-frequency noise, as "
                             "kohya's trainer takes one of them: give one.")


ALGOS = ("lora", "loha", "lokr")  # LyCORIS's names (its kohya entry's algo=), as peft trains them


@dataclass(kw_only=True)
class NetworkOptions:
    algo: str = option("lora", "the adapters: lora (LoCon with --conv-rank), or LyCORIS's loha (Hadamard product) "
                               "or lokr (Kronecker product), written in LyCORIS's kohya layout", choices=ALGOS)
    dora: bool = option(False, "DoRA (weight-decomposed LoRA, Liu et al. 2024): also train each adapted layer's "
                               "magnitude (peft's use_dora; LyCORIS's dora_wd)")

    def check_network(self, from_file=None) -> None:
        """DoRA is for algo lora; new adapters of another kind, or a DoRA file, do not go on from a file
        (``from_file``: network_weights, an existing file)."""
        if self.dora and self.algo != "lora":
            raise ValueError(f"dora is trained with algo 'lora' (peft has no DoRA {self.algo}): leave one out.")
        if from_file is not None and (self.dora or self.algo != "lora"):
            raise ValueError(f"{'dora' if self.dora else f'algo={self.algo!r}'} trains new adapters, and "
                             f"network_weights goes on from a file's LoRA adapters: give one of them.")
        if from_file is not None and any(k.endswith(("dora_scale", "lora_magnitude_vector")) for k in _keys(from_file)):
            raise ValueError(f"network_weights={str(from_file)!r} is a DoRA file: training does not go on from DoRA "
                             f"yet (its update would go on as a full-rank LoRA); train a new one with dora=True "
                             f"(--dora).")


def _keys(path) -> list[str]:
    """The tensor names of a .safetensors file, or none when it is not one (reading it then says why)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except Exception:  # noqa: BLE001 - safetensors raises several types for a file that is not one
        return []


# kohya's --optimizer_type, by latentgen's name: (module, class, its package on PyPI, defaults under the user's args)
OPTIMIZERS = {
    "adamw": ("torch.optim", "AdamW", "torch", {}),
    "adafactor": ("transformers.optimization", "Adafactor", "transformers",  # at the given lr, as kohya sets it
                  {"scale_parameter": False, "relative_step": False, "warmup_init": False}),
    "prodigy": ("prodigyopt", "Prodigy", "prodigyopt", {}),  # Mishchenko & Defazio 2023: lr 1.0, it sizes its steps
    "lion": ("lion_pytorch", "Lion", "lion-pytorch", {}),  # Chen et al. 2023: lr 3-10x below AdamW's
    "sgd": ("torch.optim", "SGD", "torch", {"momentum": 0.9, "nesterov": True}),  # kohya's SGDNesterov
}


@dataclass(kw_only=True)
class OptimizerOptions:
    optimizer: str = option("adamw", "adamw, adafactor, prodigy (--lr 1), lion or sgd (Nesterov) (kohya's "
                                     "--optimizer_type; prodigy and lion: pip install latentgen[optimizers])",
                            choices=tuple(OPTIMIZERS))
    optimizer_args: list[str] = option([], "KEY=VALUE for the optimizer, the value a Python literal, such as "
                                           "weight_decay=0.01 or d_coef=2 (repeatable; kohya's --optimizer_args)",
                                       flag="optimizer-arg")

    def optimizer_class(self):
        """The optimizer's class, imported; ImportError naming the package to install."""
        module, name, package, _ = OPTIMIZERS[self.optimizer]
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:
            raise ImportError(f"optimizer={self.optimizer!r} needs the {package} package: pip install {package} "
                              f"(or latentgen[optimizers]), or use optimizer='adamw'.") from None

    def optimizer_kwargs(self) -> dict:
        """The optimizer's keyword arguments: its defaults here under ``optimizer_args``, each checked."""
        out = dict(OPTIMIZERS[self.optimizer][3])
        for arg in self.optimizer_args:
            key, eq, value = str(arg).partition("=")
            try:
                out[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
                eq = ""
            if not eq or not key.strip().isidentifier():
                raise ValueError(f"optimizer_args: {arg!r} is not KEY=VALUE with a Python literal value; write it as "
                                 f"weight_decay=0.01, decouple=True or betas=(0.9,0.99).")
        return out

    def check_optimizer(self) -> None:
        """The optimizer's package is there and it takes every argument given, names and values (lr and params are
        the loop's): it is built once on a stand-in parameter, before any model loads."""
        import torch

        cls, kwargs = self.optimizer_class(), self.optimizer_kwargs()
        takes = inspect.signature(cls.__init__).parameters
        bad = [k for k in kwargs if k in ("params", "lr") or
               (k not in takes and not any(p.kind == p.VAR_KEYWORD for p in takes.values()))]
        if bad:
            raise ValueError(f"optimizer_args: {cls.__name__} takes no {bad[0]!r}; it takes "
                             f"{', '.join(k for k in takes if k not in ('self', 'params', 'lr'))}.")
        try:
            cls([torch.nn.Parameter(torch.zeros(1))], lr=getattr(self, "lr", 1e-4), **kwargs)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ValueError(f"optimizer_args: {cls.__name__} refuses {kwargs}: {e}") from None
