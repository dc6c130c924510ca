"""The header of a trained LoRA file: the ``ss_*`` keys kohya's sd-scripts writes, which A1111 shows in its LoRA
cards and civitai reads (the network, its dimensions, the learning rates, the data's options). latentgen writes
them in both layouts; ``latentgen_training`` (in ``finetune.fit``) holds the full settings beside them.
"""

from __future__ import annotations

import json
import time


def kohya(cfg, c, steps: int, res: int, n_images: int) -> dict:
    """The keys every LoRA trainer here writes: ``cfg`` a ``LoraOptions``, ``c`` the base model's components,
    ``steps`` optimizer steps at ``res`` over ``n_images`` (repeats counted)."""
    alpha, conv_alpha = cfg.alphas()
    algo, dora = getattr(cfg, "algo", "lora"), getattr(cfg, "dora", False)
    lycoris = {"algo": algo, **({"dora_wd": True} if dora else {})} if dora or algo != "lora" else {}  # its args
    locon = {"conv_dim": cfg.conv_rank, "conv_alpha": conv_alpha} if cfg.conv_rank else {}
    return {"ss_network_module": "lycoris.kohya" if lycoris else "networks.lora", "ss_network_dim": cfg.rank,
            "ss_network_alpha": alpha, "ss_network_args": json.dumps({**lycoris, **locon}),
            "ss_learning_rate": cfg.lr, "ss_lr_scheduler": cfg.lr_schedule, "ss_max_train_steps": steps,
            "ss_resolution": f"({res}, {res})", "ss_seed": cfg.seed, "ss_num_train_images": n_images,
            "ss_output_name": cfg.name, "ss_base_model": c.name, "ss_training_started_at": round(time.time()),
            "ss_unet_lr": cfg.learning_rate("unet"), "ss_text_encoder_lr": cfg.learning_rate("text_encoder"),
            "ss_shuffle_caption": cfg.shuffle_caption, "ss_keep_tokens": cfg.keep_tokens,
            "ss_caption_tag_dropout_rate": cfg.caption_tag_dropout, "ss_optimizer": optimizer(cfg),
            **({"ss_base_model_version": "sdxl_base_v1-0"} if c.xl is not None else {})}


def finetune(cfg, bucketed, n_reg: int) -> dict:
    """finetune-lora's own keys: ``cfg`` a ``LoraTrainConfig``; ``bucketed`` the ``captioned.Bucketed`` latents with
    aspect-ratio buckets (else None); ``n_reg`` its prior (regularization) images."""
    return {**(bucketed.metadata() if bucketed is not None else {"ss_enable_bucket": False}),
            "ss_network_train_text_encoder": cfg.train_text_encoder, "ss_num_reg_images": n_reg,
            "ss_clip_skip": cfg.clip_skip, "ss_flip_aug": cfg.flip_aug, "ss_bucket_no_upscale": cfg.bucket_no_upscale,
            "ss_min_snr_gamma": cfg.snr_gamma,
            "ss_noise_offset": cfg.noise_offset, "ss_adaptive_noise_scale": cfg.adaptive_noise_scale,
            "ss_multires_noise_iterations": cfg.multires_noise_iterations,
            "ss_multires_noise_discount": cfg.multires_noise_discount, "ss_ip_noise_gamma": cfg.ip_noise_gamma,
            "ss_debiased_estimation": cfg.debiased_estimation}


def optimizer(cfg) -> str:
    """The optimizer as kohya names it: its class's full name and its arguments, ``module.Class(k=v,...)``."""
    cls, args = cfg.optimizer_class(), cfg.optimizer_kwargs()
    name = f"{cls.__module__}.{cls.__name__}"
    return f"{name}({','.join(f'{k}={v}' for k, v in args.items())})" if args else name
