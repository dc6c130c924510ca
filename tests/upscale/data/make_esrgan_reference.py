"""Builds the reference data of tests/upscale/test_esrgan.py: small random super-resolution models in the key
layouts people's files use, and what spandrel (the architecture library A1111 1.9+ and ComfyUI load them with)
outputs for one input. spandrel needs torchvision, which this project does not install, so run it where spandrel
imports, or as here with spandrel unpacked beside (pip install --no-deps --target DIR spandrel==0.4.2 einops) and
a stand-in torchvision module (used only by spandrel's face-restoration and LaMa models, never run here):

    PYTHONPATH=DIR python tests/upscale/data/make_esrgan_reference.py

Writes esrgan_reference.safetensors (the input, each model's weights under "NAME/...", its output under
"out/NAME", weights in fp16, which holds their values exactly) next to this file. The BasicSR and BSRGAN layouts of the ESRGAN model are made by ``new_names`` and
``bsrgan_names`` (the test makes them the same way), after checking that spandrel reads them to the same output.
"""

import re
import sys
import types
from pathlib import Path

import torch


def stand_in_torchvision() -> None:
    if "torchvision" in sys.modules:
        return
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        sys.modules[name] = types.ModuleType(name)
    tf = sys.modules["torchvision.transforms.functional"]
    tf.normalize = tf.rotate = None
    tf.InterpolationMode = types.SimpleNamespace(BILINEAR=0, NEAREST=1)


def new_names(old: dict) -> dict:
    """spandrel's (original ESRGAN) names -> BasicSR's, written here independently of latentgen's reader."""
    idx = sorted({int(k.split(".")[1]) for k in old if re.match(r"model\.\d+\.weight$", k)} - {0, 1})
    blocks = max(int(k.split(".")[3]) for k in old if k.startswith("model.1.sub.") and ".RDB" in k)
    out = {}
    for k, v in old.items():
        if m := re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(\w+)$", k):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = v
        elif m := re.match(rf"model\.1\.sub\.{blocks + 1}\.(\w+)$", k):
            out[f"conv_body.{m[1]}"] = v
        else:
            n, kind = int(k.split(".")[1]), k.split(".")[2]
            name = {0: "conv_first", idx[-2]: "conv_hr", idx[-1]: "conv_last"}.get(n) or f"conv_up{idx.index(n) + 1}"
            out[f"{name}.{kind}"] = v
    return out


def bsrgan_names(new: dict) -> dict:
    out = {}
    for k, v in new.items():
        k = re.sub(r"^body\.(\d+)\.rdb(\d)\.", r"RRDB_trunk.\1.RDB\2.", k)
        k = re.sub(r"^conv_body\.", "trunk_conv.", k)
        k = re.sub(r"^conv_up(\d)\.", r"upconv\1.", k)
        out[re.sub(r"^conv_hr\.", "HRconv.", k)] = v
    return out


def randomized(model: torch.nn.Module) -> dict:
    g = torch.Generator().manual_seed(0)
    # values fp16 holds exactly, so the weights are stored in half the bytes and read back to the same fp32
    return {k: (torch.randn(v.shape, generator=g) * 0.1).half().float() for k, v in model.state_dict().items()}


def main() -> None:
    stand_in_torchvision()
    from safetensors.torch import save_file
    from spandrel import ModelLoader
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    old4 = randomized(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4))
    real2 = new_names(randomized(ESRGAN(in_nc=12, out_nc=3, num_filters=8, num_blocks=1, scale=4,
                                        shuffle_factor=2)))
    layouts = {"esrgan_x4": old4, "realesrgan_x2": real2,
               "compact_x4": randomized(Compact(num_feat=8, num_conv=2, upscale=4))}
    x = torch.rand(1, 3, 11, 9, generator=torch.Generator().manual_seed(1))
    tensors = {"input": x}
    for name, sd in layouts.items():
        model = ModelLoader().load_from_state_dict(dict(sd)).eval()
        with torch.no_grad():
            tensors[f"out/{name}"] = model.model(x).contiguous()  # the network itself: no padding, no clamp
        tensors.update({f"{name}/{k}": v.half() for k, v in sd.items()})
        print(name, type(model.model).__name__, "scale", model.scale, tuple(tensors[f"out/{name}"].shape))
    for renamed in (new_names(old4), bsrgan_names(new_names(old4))):  # the other layouts, as spandrel reads them
        with torch.no_grad():
            out = ModelLoader().load_from_state_dict(renamed).eval().model(x)
        assert torch.equal(out, tensors["out/esrgan_x4"]), "a renamed layout reads differently"
    save_file(tensors, str(Path(__file__).with_name("esrgan_reference.safetensors")))


if __name__ == "__main__":
    main()
