"""Flags of the command line: argparse types built on ``latentgen.checks``, and the flags of a config
dataclass derived from its fields (name, type, default, help, choices), so defaults live once."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from .. import checks


def _typed(parse, check):
    """An argparse type: ``parse`` the string, then ``check`` it; a failure is argparse's usage error."""
    def convert(s: str):
        try:
            return check(parse(s))
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).replace("value=", "")) from None
    return convert


positive_int = _typed(int, lambda v: checks.whole("value", v, 1))
finite_float = _typed(float, lambda v: checks.number("value", v))


def optional(parse):
    """A type that also reads 'none' as None (a field whose default is a value, such as snr_gamma)."""
    return lambda s: None if s.strip().lower() == "none" else parse(s)


def size_spec(s: str) -> tuple[int, int]:
    """'WxH' in pixels, such as '512x768'."""
    w, _, h = s.lower().partition("x")
    if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise argparse.ArgumentTypeError(f"{s!r} is not a size: write WIDTHxHEIGHT in pixels, such as 512x512")
    return int(w), int(h)


def scheduler_name(s: str) -> str:
    from ..schedulers import SAMPLERS  # light: names only, checked before any model loads

    if s not in SAMPLERS:
        raise argparse.ArgumentTypeError(f"unknown scheduler {s!r}; use one of: {', '.join(SAMPLERS)}")
    return s


def vae_file(s: str) -> str:
    """--vae: an existing file (or a tiny VAE's folder, or the shipped tiny VAE's name), checked before any model
    loads."""
    from ..vae import SHIPPED, resolve

    p = resolve(s)
    if not p.is_file() and not (p / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"no VAE file at {s!r}; pass a .safetensors/.ckpt VAE "
                                         f"(LDM or diffusers layout), or a tiny VAE (taesd_decoder.safetensors, "
                                         f"an AutoencoderTiny folder, {SHIPPED}: the embedded model's).")
    return s


def prediction_type_name(s: str) -> str:
    from ..models.prediction import normalize

    try:
        return normalize(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("prediction_type=", "")) from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="diffusers folder, single-file checkpoint (.safetensors/.ckpt) or preset name "
                        "(default: the embedded model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="default: fp16 on CUDA; on CPU bf16 for SD-sized models where the CPU has native bf16, "
                        "else fp32 (fp32: diffusers' exact arithmetic)")
    p.add_argument("--backend", default=None, choices=["torch", "openvino", "cudagraph", "compile"],
                   help="where the U-Net runs (default: $LATENTGEN_BACKEND, else on CUDA compile for SD-sized "
                        "U-Nets and cudagraph for small ones, with --dtype fp32 or where torch.compile cannot run; "
                        "openvino on CPU unless --dtype fp32)")
    p.add_argument("--vae", type=vae_file, default=None, help="a VAE file used instead of the model's own")
    p.add_argument("--prediction-type", type=prediction_type_name, default=None,
                   help="epsilon or v_prediction (default: the model's; single SD 2.x files: <name>.yaml or detected)")
    p.add_argument("--zero-terminal-snr", action="store_true", default=None,
                   help="the model was trained on a zero-terminal-SNR schedule (A1111's noise schedule option; "
                        "default: what the model says, a single file's ztsnr tensor)")


def add_refiner_args(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("refiner", "a second model draws the end of the noise schedule (SDXL's refiner; A1111's "
                                        "refiner_checkpoint and refiner_switch_at)")
    r.add_argument("--refiner", default=None, metavar="FOLDER|FILE", help="the refiner model (a diffusers folder or an SDXL refiner single file)")
    r.add_argument("--refiner-switch-at", type=finite_float, default=0.8,
                   help="the fraction of the noise schedule --model draws before the refiner takes over (default 0.8)")
    r.add_argument("--refiner-hires-pass", choices=("first", "second", "both"), default="second",
                   help="with the hires fix: the pass(es) the refiner acts in (A1111's hires_fix_refiner_pass; "
                        "default second)")


def load_refiner(args: argparse.Namespace):
    """A ``latentgen.Refiner`` of the ``--refiner`` flags (its switch checked first), or None; on --device/--dtype."""
    if not getattr(args, "refiner", None):
        return None
    import latentgen

    checks.number("--refiner-switch-at", args.refiner_switch_at, minimum=0, maximum=1,
                  fix="use a fraction of the noise schedule from 0 to 1, such as 0.8")
    return latentgen.Refiner(latentgen.load(args.refiner, device=args.device, dtype=args.dtype), args.refiner_switch_at,
                             getattr(args, "refiner_hires_pass", "second"))


def load_model(args: argparse.Namespace, path: str | None = None, **overrides):
    """``latentgen.load`` of ``path`` (default: ``--model``) with the flags of ``add_model_args`` (``overrides``
    replace any of them)."""
    import latentgen

    kw = {"device": args.device, "dtype": args.dtype, "vae": getattr(args, "vae", None),
          "backend": getattr(args, "backend", None),
          "prediction_type": getattr(args, "prediction_type", None),
          # a flag about the model: for --model only (hires, batch and plot models say their own)
          "zero_terminal_snr": getattr(args, "zero_terminal_snr", None) if path in (None, args.model) else None,
          **overrides}
    pipe = latentgen.load(path or args.model, **kw)
    if pipe.runtime.backend == "compile" and not getattr(args, "lora", None):  # with a LoRA the module runs as is
        print("note: the U-Net runs torch.compile's kernels; the first call of each image size, batch size and "
              "prompt length compiles them (about a minute; seconds in later runs, from inductor's cache). "
              "--backend cudagraph skips the compile.", file=sys.stderr)
    return pipe


def lora_spec(spec: str) -> tuple[str, float | tuple[float, float]]:
    """'path[:scale]' or 'path:TE:UNET' (A1111's per-part weights) -> (path, scale), checked before any model
    loads."""
    from ..lora.adapters import check_scale
    from ..lora.formats import resolve, shipped_loras

    parts, numbers = spec.split(":"), []
    while len(parts) > 1 and len(numbers) < 2:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    path, scale = ":".join(parts), numbers[0] if len(numbers) == 1 else tuple(numbers) if numbers else 1.0
    try:
        check_scale(scale, f"--lora {spec}: scale")
        return str(resolve(path)), scale
    except FileNotFoundError:
        raise FileNotFoundError(f"--lora {spec}: no file at {path!r}; use --lora path/to/lora.safetensors[:scale] "
                                f"or a shipped LoRA's name ({', '.join(shipped_loras()) or 'none'}).") from None


def _base(hint):
    """(type, optional) of a field's annotation: ``int | None`` -> (int, True)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def add_config_args(p: argparse.ArgumentParser, cls, *, positional: tuple[str, ...] = ()) -> None:
    """One flag per field of the config dataclass ``cls`` (``batch_size`` -> ``--batch-size``):
    bools are switches, lists repeatable flags, fields without a default required. Values are
    parsed here and checked by the config's own ``check()``."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        kind, opt = _base(hints[f.name])
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        text = f.metadata.get("help") or ""
        if not (default is MISSING or default is None or default is False or default == []):
            text += f" (default: {default})"
        meta = {"help": text or None, "choices": f.metadata.get("choices")}
        if f.name in positional:
            p.add_argument(f.name, type=kind, **meta)
            continue
        flag = "--" + (f.metadata.get("flag") or f.name).replace("_", "-")
        if kind is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction if default else "store_true",
                           default=default, help=meta["help"])
        elif typing.get_origin(kind) is list:
            p.add_argument(flag, dest=f.name, action="append", default=default, metavar="TEXT", **meta)
        else:
            parse = {int: int, float: finite_float, Path: Path}.get(kind, str)
            required = default is MISSING
            p.add_argument(flag, dest=f.name, type=optional(parse) if opt and default is not None else parse,
                           required=required, default=None if required else default, **meta)


def config_from(args: argparse.Namespace, cls):
    """The config dataclass ``cls`` from parsed flags (``add_config_args``), checked."""
    cfg = cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
    cfg.check()
    return cfg


def styled_prompts(args: argparse.Namespace) -> None:
    """Apply A1111's prompt styles (``--style``) to the prompts, the hires pass's too where given, once."""
    if not args.style:
        return
    from ..text import styles

    if args.styles_file is None:
        raise ValueError("--style needs --styles-file: the styles.csv (name, prompt, negative_prompt) it names.")
    table = styles.read(args.styles_file)
    args.prompt, args.negative = styles.apply(args.prompt, args.negative, args.style, table, "--style")
    if hasattr(args, "hires_prompt"):  # generate's hires pass, styled where given
        args.hires_prompt, args.hires_negative = styles.apply_given(args.hires_prompt, args.hires_negative, args.style,
                                                                    table, "--style")
    args.style = []  # applied
