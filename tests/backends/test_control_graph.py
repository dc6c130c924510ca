"""latentgen.backends.control_graph and the U-Net with residual inputs: on the OpenVINO backend a ControlNet and the
U-Net that adds its residuals run compiled, and give torch's images (one unit in each mode, two at once, img2img,
inpainting, the hires fix's two passes, a LoRA on top); the residual U-Net is converted once, beside the plain one in the disk cache."""

import numpy as np
import pytest
import torch
from conftest import mask, max_diff, photo
from PIL import Image

import latentgen
from latentgen import Control
from latentgen.backends import cache, choice, control_graph, runtime
from latentgen.backends import openvino as openvino_unet

pytestmark = pytest.mark.skipif(not choice.available(), reason="openvino is a dependency; this platform has no wheel")


def _hint(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((16, 16)) > 0.5).astype(np.uint8) * 255).resize((64, 64)).convert("RGB")


@pytest.fixture(scope="module")
def fast(tiny_folder):
    return latentgen.load(tiny_folder, backend="openvino")


def test_a_compiled_controlnet_gives_the_torch_residuals(fast, controlnets):
    from diffusers import ControlNetModel

    net = ControlNetModel.from_pretrained(controlnets[0])
    run = fast.runtime.for_controlnet(net)
    assert isinstance(run, control_graph.CompiledControlNet) and fast.runtime.for_controlnet(net) is run  # kept
    g = torch.Generator().manual_seed(0)
    x, ctx, hint = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 77, 32, generator=g), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = control_graph.run_torch(net, x, torch.tensor(500), ctx, hint)
    got = run(x, torch.tensor(500), ctx, hint)
    assert len(got[0]) == len(want[0]) and got[1].shape == want[1].shape
    for a, b in zip([*got[0], got[1]], [*want[0], want[1]]):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert max(float(b.abs().max()) for b in want[0]) > 0.1  # residuals that matter
    assert not isinstance(runtime.Runtime("torch").for_controlnet(net), control_graph.CompiledControlNet)  # the module


def test_control_runs_compiled_and_draws_the_torch_images(fast, pipe, controlnets):
    kw = dict(seed=4, steps=3, guidance=6.0)
    for controls in (Control(_hint(0), controlnets[0], weight=0.8, start=0.25),
                     Control(_hint(0), controlnets[0], mode="prompt"),
                     [Control(_hint(0), controlnets[0], mode="controlnet"), Control(_hint(1), controlnets[1])]):
        got = fast.generate("a red circle", control=controls, **kw)
        assert max_diff(got, pipe.generate("a red circle", control=controls, **kw)) <= 1, controls
    assert max_diff(got, fast.generate("a red circle", **kw)) > 2  # the control matters
    compiled = fast.runtime.for_unet(fast.unet)
    assert isinstance(compiled.controlled, openvino_unet.Compiled) and compiled.controlled is not compiled
    assert len(compiled.controlled.model.get_parameters()) > 3 == len(compiled.model.get_parameters())  # residuals
    assert "ran torch" not in repr(fast)
    unit = Control(_hint(2), controlnets[0])
    kw = dict(seed=5, steps=3, control=unit)
    assert max_diff(fast.img2img("a dog", photo(), strength=0.6, **kw), pipe.img2img("a dog", photo(), strength=0.6, **kw)) <= 1
    assert max_diff(fast.inpaint("a bird", photo(), mask(), **kw), pipe.inpaint("a bird", photo(), mask(), **kw)) <= 1
    kw = dict(seed=6, steps=3, control=unit, hires=latentgen.Hires(scale=2, strength=0.5))  # both passes controlled
    assert max_diff(fast.generate("a cat", **kw), pipe.generate("a cat", **kw)) <= 1


def test_the_residual_unet_is_converted_once_beside_the_plain_one(tiny_folder, controlnets, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTGEN_CACHE", str(tmp_path))
    first = latentgen.load(tiny_folder, backend="openvino")
    first.generate("a cat", seed=0, steps=1, control=Control(_hint(0), controlnets[0]))
    assert first.runtime.conversions == 3  # the U-Net, the U-Net with residual inputs, the ControlNet
    names = sorted(e.folder.name for e in cache.entries())
    assert len(names) == 3 and any(n.endswith("-residuals") for n in names)
    again = latentgen.load(tiny_folder, backend="openvino")
    again.generate("a cat", seed=0, steps=1, control=Control(_hint(0), controlnets[0]))
    assert again.runtime.conversions == 0


def test_a_lora_with_control_stays_compiled(tiny_folder, pipe, controlnets, lora_files):
    fast, ref = latentgen.load(tiny_folder, backend="openvino"), latentgen.load(tiny_folder, backend="torch")
    for p in (fast, ref):
        p.load_lora(lora_files[0], name="a", scale=0.8)
    kw = dict(seed=2, steps=3, control=Control(_hint(0), controlnets[0]))
    assert max_diff(fast.generate("a cat", **kw), ref.generate("a cat", **kw)) <= 1
    variant = fast.runtime.for_unet(fast.unet)
    assert isinstance(variant.controlled, openvino_unet.Compiled) and "ran torch" not in repr(fast)
    assert max_diff(fast.generate("a cat", **kw), pipe.generate("a cat", **kw)) > 2  # the LoRA is in it
