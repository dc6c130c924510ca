"""``latentgen export``: any model latentgen loads, written as one LDM-layout ``.safetensors`` file.

    latentgen export path/to/diffusers-folder model.safetensors
    latentgen export model.ckpt model.safetensors --dtype fp16      # a pickle-free, half-size copy
    latentgen export model.safetensors merged.safetensors --lora style.safetensors:0.8   # a LoRA baked in
"""

from __future__ import annotations

import argparse

from .args import lora_spec, prediction_type_name, vae_file


def cmd_export(args: argparse.Namespace) -> int:
    from ..models import export as ldm_export

    loras = [lora_spec(spec) for spec in args.lora]  # files checked before the model loads
    out = ldm_export.export(args.source, args.output, force=args.force, dtype=args.dtype, vae=args.vae,
                             prediction_type=args.prediction_type, loras=loras,
                             zero_terminal_snr=args.zero_terminal_snr)
    print(f"{out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def add_parser(sub) -> None:
    e = sub.add_parser("export", help="write a model as one LDM-layout .safetensors file (A1111, ComfyUI)",
                       description="Load SOURCE as latentgen.load does (diffusers folder, single file, preset) "
                                   "and write its U-Net, VAE and text encoder under the original Stable "
                                   "Diffusion names, with its configs and prediction type in the header.")
    e.add_argument("source", help="diffusers folder, .safetensors/.ckpt file or preset name")
    e.add_argument("output", help="out.safetensors (never overwritten without --force)")
    e.add_argument("--force", action="store_true", help="replace an existing output file")
    e.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="dtype of the written tensors (default: fp32, as loaded on CPU)")
    e.add_argument("--vae", type=vae_file, default=None, help="write this VAE file instead of the model's own")
    e.add_argument("--prediction-type", type=prediction_type_name, default=None,
                   help="epsilon or v_prediction (default: what the model says, or detected for SD 2.x)")
    e.add_argument("--zero-terminal-snr", action="store_true", default=None,
                   help="the model was trained on a zero-terminal-SNR schedule: written in the header and as the "
                        "ztsnr tensor ComfyUI reads (default: what the model says)")
    e.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="bake this LoRA (diffusers, kohya or LyCORIS file; PATH:TE:UNET per part) into the written "
                        "weights, as kohya's merge_lora.py; repeatable")
    e.set_defaults(func=cmd_export)
