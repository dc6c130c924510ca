"""Super-resolution model files of the ESRGAN family, the ones A1111 users keep in ``models/ESRGAN`` and
``models/RealESRGAN``, read from their weights alone (the architecture and its sizes come from the tensor names
and shapes, as spandrel detects them):

* **ESRGAN** (Wang et al. 2018, arXiv:1809.00219): RRDBNet, residual-in-residual dense blocks, then nearest x2
  upsampling + conv per factor of 2. Three key layouts: the original ``model.N...`` one (4x-UltraSharp, Remacri,
  ...), BSRGAN's ``RRDB_trunk...``, and BasicSR's ``conv_first``/``body``/``conv_up1`` (Real-ESRGAN x4plus,
  anime 6B). Real-ESRGAN's x2 and x1 models take a pixel-unshuffled input (arXiv:2107.10833, section 4.2).
* **Real-ESRGAN Compact** (SRVGGNetCompact: realesr-general-x4v3, animevideov3): convs + PReLU in low
  resolution, a pixel shuffle, plus the nearest-upscaled input.

spandrel reads these and many more, but cannot be imported without torchvision, which would pull a CUDA torch
here; these two architectures are small and stable, so they are written out below and checked against
spandrel's outputs (tests/upscale/data). Other architectures (SwinIR, HAT, DAT, ...) are refused by name.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

SUFFIXES = (".pth", ".pt", ".safetensors")


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1)


class DenseBlock(nn.Module):
    """Five convs, each fed every earlier output (channels nf + k*gc); the result scaled by 0.2 onto the input."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        for k in range(5):
            setattr(self, f"conv{k + 1}", _conv(nf + k * gc, gc if k < 4 else nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for k in range(1, 5):
            feats.append(F.leaky_relu(getattr(self, f"conv{k}")(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, scaled by 0.2 onto the input."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = DenseBlock(nf, gc), DenseBlock(nf, gc), DenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """(B, 3, h, w) in [0, 1] -> (B, 3, h*scale, w*scale). BasicSR's names; ``ups`` x2 stages, and an input
    pixel-unshuffled by ``unshuffle`` (1, 2 or 4) first, so scale = 2**ups / unshuffle."""

    def __init__(self, cin: int, cout: int, nf: int, gc: int, blocks: int, ups: int, unshuffle: int = 1):
        super().__init__()
        self.unshuffle, self.scale, self.channels = unshuffle, 2 ** ups // unshuffle, (cin, cout)
        self.conv_first = _conv(cin * unshuffle ** 2, nf)
        self.body = nn.Sequential(*[RRDB(nf, gc) for _ in range(blocks)])
        self.conv_body = _conv(nf, nf)
        for k in range(ups):
            setattr(self, f"conv_up{k + 1}", _conv(nf, nf))
        self.ups = ups
        self.conv_hr, self.conv_last = _conv(nf, nf), _conv(nf, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.unshuffle > 1:  # reflect-padded to a multiple, then (B, 3*u*u, h/u, w/u)
            u = self.unshuffle
            x = F.pixel_unshuffle(F.pad(x, (0, -w % u, 0, -h % u), mode="reflect"), u)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for k in range(self.ups):
            feat = F.leaky_relu(getattr(self, f"conv_up{k + 1}")(F.interpolate(feat, scale_factor=2.0)), 0.2)
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
        return out[..., :h * self.scale, :w * self.scale]


class Compact(nn.Module):
    """SRVGGNetCompact: (B, 3, h, w) -> (B, 3, h*scale, w*scale); ``body`` alternates conv and PReLU."""

    def __init__(self, cin: int, nf: int, convs: int, scale: int):
        super().__init__()
        layers = [_conv(cin, nf), nn.PReLU(nf)]
        for _ in range(convs):
            layers += [_conv(nf, nf), nn.PReLU(nf)]
        self.body = nn.Sequential(*layers, _conv(nf, cin * scale * scale))
        self.scale, self.channels = scale, (cin, cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.body(x), self.scale) + F.interpolate(x, scale_factor=float(self.scale))


_BSRGAN = ((r"^RRDB_trunk\.(\d+)\.RDB(\d)\.", r"body.\1.rdb\2."), (r"^trunk_conv\.", "conv_body."),
           (r"^upconv(\d)\.", r"conv_up\1."), (r"^HRconv\.", "conv_hr."))


def _rename_rrdb(sd: dict) -> dict:
    """The original and BSRGAN key layouts -> BasicSR's (the names ``RRDBNet`` uses)."""
    if "model.0.weight" not in sd:
        out = {}
        for k, v in sd.items():
            for pattern, to in _BSRGAN:
                k = re.sub(pattern, to, k)
            out[k] = v
        return out
    # model.0 conv_first; model.1.sub.{i}.RDB{k}.conv{j}.0 the blocks, model.1.sub.{blocks} conv_body; then
    # [Upsample, conv, LeakyReLU] per x2 (convs at 3, 6, ...), conv_hr, LeakyReLU, conv_last
    tail = sorted({int(k.split(".")[1]) for k in sd if re.match(r"model\.\d+\.weight$", k)} - {0, 1})
    names = {0: "conv_first", **{n: f"conv_up{i + 1}" for i, n in enumerate(tail[:-2])},
             tail[-2]: "conv_hr", tail[-1]: "conv_last"}
    blocks = max(int(m[1]) for k in sd if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", k)))
    out = {}
    for k, v in sd.items():
        if m := re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", k):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = v
        elif m := re.match(rf"model\.1\.sub\.{blocks + 1}\.(weight|bias)$", k):
            out[f"conv_body.{m[1]}"] = v
        elif m := re.match(r"model\.(\d+)\.(weight|bias)$", k):
            out[f"{names[int(m[1])]}.{m[2]}"] = v
        else:
            out[k] = v  # unknown: load_state_dict names it
    return out


def _build(sd: dict) -> tuple[nn.Module | None, dict]:
    """(the network ``sd``'s names and shapes describe, or None; ``sd`` in its names), weights not loaded yet."""
    if "body.0.weight" in sd and "body.1.weight" in sd:  # Compact
        last = max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
        cin, nf = sd["body.0.weight"].shape[1], sd["body.0.weight"].shape[0]
        scale = round((sd[f"body.{last}.weight"].shape[0] / cin) ** 0.5)
        net = Compact(cin, nf, (last - 2) // 2, scale)
    elif any(k in sd for k in ("model.1.sub.0.RDB1.conv1.0.weight", "body.0.rdb1.conv1.weight",
                               "RRDB_trunk.0.RDB1.conv1.weight")):
        sd = _rename_rrdb(sd)
        nf, cin4 = sd["conv_first.weight"].shape[:2]
        cout, gc = sd["conv_last.weight"].shape[0], sd["body.0.rdb1.conv1.weight"].shape[0]
        unshuffle = {cout: 1, cout * 4: 2, cout * 16: 4}.get(cin4, 1)
        blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("body."))
        ups = sum(1 for k in sd if re.match(r"conv_up\d\.weight$", k))
        net = RRDBNet(cin4 // unshuffle ** 2, cout, nf, gc, blocks, ups, unshuffle)
    else:
        return None, sd
    return net, sd


def from_state_dict(sd: dict, name: str = "model") -> nn.Module:
    """The network ``sd`` holds, its weights loaded, in eval mode, with ``.scale`` and ``.arch``; a ValueError
    naming ``name`` for any other architecture."""
    sd = sd.get("params_ema", sd.get("params", sd))
    if any(".conv1x1." in k for k in sd):
        raise ValueError(f"{name} is an ESRGAN+ model (conv1x1 branches), which latentgen does not read: use an "
                         f"ESRGAN, Real-ESRGAN or Compact model.")
    try:
        net, sd = _build(sd)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{name} has the names of an ESRGAN-family model but not their full set ({e!r}).") from None
    if net is None:
        raise ValueError(f"{name} is not an ESRGAN, Real-ESRGAN or Compact model (its first keys: "
                         f"{', '.join(list(sd)[:4])}); other architectures (SwinIR, HAT, DAT, ...) are not read "
                         f"here.")
    net.arch = "Compact" if isinstance(net, Compact) else "ESRGAN"
    if net.channels != (3, 3):
        raise ValueError(f"{name} takes {net.channels[0]} channels and gives {net.channels[1]}; latentgen runs "
                         f"upscalers of RGB pictures (3 in, 3 out).")
    if net.scale < 1:
        raise ValueError(f"{name}: a scale below 1 is not an upscaler.")
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:
        raise ValueError(f"{name} does not fit the {net.arch} layout its names suggest: {e}") from None
    return net.eval().requires_grad_(False)


def read(path: str | Path) -> nn.Module:
    """The network in a model file (.pth/.pt pickles read with ``weights_only``, or .safetensors)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path} is not an upscaler model file: use a .pth, .pt or .safetensors file.")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a pickle needing code to load, or not a torch file at all
            raise ValueError(f"{path} could not be read as weights alone ({type(e).__name__}); latentgen loads "
                             f"pickles only with weights_only: convert it to .safetensors.") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict of tensors.")
    return from_state_dict(sd, str(path))
