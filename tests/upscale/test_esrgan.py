"""latentgen.upscale.esrgan: ESRGAN-family model files read from their weights alone. Each key layout people's
files use (the original ESRGAN one, BasicSR's, BSRGAN's, Real-ESRGAN's unshuffled x2, Compact) gives spandrel's
output for the same weights (data/esrgan_reference.safetensors, made by data/make_esrgan_reference.py with spandrel
0.4.2); files are read as weights only; other architectures and unreadable files are refused by name."""

import importlib.util
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentgen.upscale import esrgan

DATA = Path(__file__).with_name("data")


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("make_ref", DATA / "make_esrgan_reference.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)  # its renamings only: spandrel is imported inside main()
    return load_file(str(DATA / "esrgan_reference.safetensors")), make


def weights(tensors, name):
    return {k.split("/", 1)[1]: v.float() for k, v in tensors.items() if k.startswith(name + "/")}


@pytest.mark.parametrize("layout, out, arch, scale", [
    ("esrgan_x4", "esrgan_x4", "ESRGAN", 4), ("basicsr", "esrgan_x4", "ESRGAN", 4),
    ("bsrgan", "esrgan_x4", "ESRGAN", 4), ("realesrgan_x2", "realesrgan_x2", "ESRGAN", 2),
    ("compact_x4", "compact_x4", "Compact", 4),
])
def test_every_layout_gives_spandrels_output(ref, layout, out, arch, scale):
    tensors, make = ref
    sd = {"basicsr": lambda: make.new_names(weights(tensors, "esrgan_x4")),
          "bsrgan": lambda: make.bsrgan_names(make.new_names(weights(tensors, "esrgan_x4")))}.get(
        layout, lambda: weights(tensors, layout))()
    net = esrgan.from_state_dict(sd, layout)
    x = tensors["input"]  # (1, 3, 11, 9): odd sizes, so the x2 model pads before its pixel unshuffle
    got = net(x)
    assert (net.arch, net.scale, got.shape) == (arch, scale, (1, 3, 11 * scale, 9 * scale))
    assert torch.allclose(got, tensors[f"out/{out}"], atol=1e-5)


def test_files_read_as_weights_alone(ref, tmp_path):
    tensors, _ = ref
    sd = weights(tensors, "compact_x4")
    torch.save({"params_ema": sd}, tmp_path / "a.pth")  # Real-ESRGAN's own files wrap the weights
    save_file(sd, str(tmp_path / "b.safetensors"))
    x = tensors["input"]
    for name in ("a.pth", "b.safetensors"):
        assert torch.allclose(esrgan.read(tmp_path / name)(x), tensors["out/compact_x4"], atol=1e-5)


class Payload:
    def __reduce__(self):
        return (print, ("this ran from a model file",))


def test_a_pickle_that_needs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match=r"evil.pth could not be read as weights alone .*convert it to "
                                         r"\.safetensors"):
        esrgan.read(path)
    assert "this ran" not in capsys.readouterr().out


def test_other_files_and_architectures_are_refused(ref, tmp_path):
    tensors, _ = ref
    with pytest.raises(ValueError, match=r"x.bin is not an upscaler model file: use a .pth, .pt or .safetensors"):
        esrgan.read(tmp_path / "x.bin")
    with pytest.raises(ValueError, match=r"swin is not an ESRGAN, Real-ESRGAN or Compact model \(its first keys: "
                                         r"layers.0.weight\); other architectures \(SwinIR"):
        esrgan.from_state_dict({"layers.0.weight": torch.zeros(1)}, "swin")
    plus = {**weights(tensors, "esrgan_x4"), "model.1.sub.0.RDB1.conv1x1.weight": torch.zeros(32, 8, 1, 1)}
    with pytest.raises(ValueError, match=r"plus is an ESRGAN\+ model"):
        esrgan.from_state_dict(plus, "plus")
    broken = weights(tensors, "compact_x4")
    broken["body.2.weight"] = torch.zeros(8, 5, 3, 3)
    with pytest.raises(ValueError, match=r"broken does not fit the Compact layout"):
        esrgan.from_state_dict(broken, "broken")
    gray = {**broken, "body.0.weight": torch.zeros(8, 1, 3, 3), "body.4.weight": torch.zeros(16, 8, 3, 3),
            "body.4.bias": torch.zeros(16)}  # 1 channel in, x4: 16 out
    with pytest.raises(ValueError, match=r"gray takes 1 channels and gives 1; latentgen runs upscalers of RGB"):
        esrgan.from_state_dict(gray, "gray")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"holds a list, not a state dict"):
        esrgan.read(tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"half has the names of an ESRGAN-family model but not their full set"):
        esrgan.from_state_dict({"model.0.weight": torch.zeros(8, 3, 3, 3),
                                "model.1.sub.0.RDB1.conv1.0.weight": torch.zeros(32, 8, 3, 3)}, "half")
