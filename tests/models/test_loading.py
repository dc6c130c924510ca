"""latentgen.models.loading: the one load entry. It checks the arguments before reading anything, reads the
source's configs without weights, decides device, dtype and backend once from the U-Net's config (recorded in
``pipe.placement`` and said by ``repr(pipe)``), and builds the parts there."""

import pytest
import torch

import latentgen
from latentgen import precision
from latentgen.backends import choice
from latentgen.models import loading

pytestmark = pytest.mark.skipif(not choice.available(), reason="openvino is a dependency; this platform has no wheel")


def test_load_decides_once_and_says_why(tiny_folder, monkeypatch):
    monkeypatch.delenv(choice.ENV, raising=False)
    pipe = latentgen.load(tiny_folder)
    place = pipe.placement
    assert (place.device, place.dtype, place.backend) == (torch.device("cpu"), torch.float32, "openvino")
    assert place.dtype_why.startswith("the default here: ") and "small U-Net (32 wide" in place.dtype_why
    assert f"float32 ({place.dtype_why})" in repr(pipe) and f"U-Net on openvino ({place.backend_why})" in repr(pipe)
    asked = latentgen.load(tiny_folder, dtype="bf16", backend="torch")
    assert asked.placement.dtype == torch.bfloat16 and asked.placement.dtype_why.startswith("as asked; the default")
    assert "bfloat16, channels_last (as asked; the default here:" in repr(asked)
    assert "U-Net on torch (as asked)" in repr(asked)


def test_load_decides_the_backend_once_with_the_u_nets_config(tiny_folder, monkeypatch):
    monkeypatch.delenv(choice.ENV, raising=False)
    calls, requested, default = [], choice.requested, choice.default
    monkeypatch.setattr(choice, "requested", lambda *a: calls.append(("requested", a)) or requested(*a))
    monkeypatch.setattr(choice, "default", lambda *a: calls.append(("default", a)) or default(*a))
    pipe = latentgen.load(tiny_folder)
    assert [name for name, _ in calls] == ["requested", "default"]  # checked before reading, decided once after
    assert calls[1][1][2]["block_out_channels"] == list(pipe.unet.config.block_out_channels)
    assert pipe.runtime.backend == pipe.placement.backend and pipe.runtime.why == pipe.placement.backend_why
    del calls[:]
    assert latentgen.load(tiny_folder, backend="torch").runtime.backend == "torch"
    assert [name for name, _ in calls] == ["requested"]  # asked for: no rule runs


def test_fp32_asked_for_is_torch_other_dtypes_keep_the_fast_backend(tiny_folder, monkeypatch):
    monkeypatch.delenv(choice.ENV, raising=False)
    assert latentgen.load(tiny_folder, dtype="fp32").runtime.backend == "torch"
    assert latentgen.load(tiny_folder, dtype="bf16").runtime.backend == "openvino"
    assert latentgen.load(tiny_folder).runtime.backend == "openvino"


def test_bad_backends_are_refused_before_anything_loads(tiny_folder, monkeypatch):
    with pytest.raises(ValueError, match=r"backend='onnx' \(as asked\) is not supported; use one of 'torch', 'openvino'"):
        latentgen.load(tiny_folder / "no-such-folder", backend="onnx")  # the backend is checked first
    with pytest.raises(ValueError, match=r"backend='openvino' \(as asked\) runs on the CPU, but the model is on cuda"):
        choice.requested("openvino", torch.device("cuda"))
    for name in ("cudagraph", "compile"):
        with pytest.raises(ValueError, match=rf"backend='{name}' \(as asked\) runs on CUDA GPUs, but the model is "
                                             r"on cpu; use backend='torch' or 'openvino'\.$"):
            latentgen.load(tiny_folder, device="cpu", backend=name)
    monkeypatch.setenv(choice.ENV, "tensorrt")
    with pytest.raises(ValueError, match=r"backend='tensorrt' \(\$LATENTGEN_BACKEND\) is not supported.*"
                                         r"\(or unset \$LATENTGEN_BACKEND\)\.$"):
        latentgen.load(tiny_folder)
    monkeypatch.setenv(choice.ENV, "cudagraph")  # the fix names the variable the user set, not backend=
    with pytest.raises(ValueError, match=r"backend='cudagraph' \(\$LATENTGEN_BACKEND\) runs on CUDA GPUs.*use "
                                         r"backend='torch' or 'openvino' \(or unset \$LATENTGEN_BACKEND\)\.$"):
        latentgen.load(tiny_folder)


@pytest.mark.parametrize("device, words", [
    ("bogus", r"device='bogus' is invalid: use 'cpu', 'cuda' or 'cuda:N'"),
    (3.5, r"device=3.5 is invalid: use 'cpu', 'cuda'"),
])
def test_bad_devices_are_named_before_anything_is_read(tiny_folder, device, words):
    with pytest.raises(ValueError, match=words):
        latentgen.load(tiny_folder / "no-such-folder", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message for a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_with_the_fix(tiny_folder):
    with pytest.raises(ValueError, match=r"device='cuda' is invalid: torch .* sees no CUDA GPU here; use device='cpu'"):
        latentgen.load(tiny_folder, device="cuda")


def test_components_alone_carry_the_placement(tiny_folder):
    c = loading.load_components(tiny_folder, backend="torch")
    assert c.placement == precision.Placement(torch.device("cpu"), torch.float32, c.placement.dtype_why, "torch",
                                              "as asked")
    assert c.unet.dtype == torch.float32 and latentgen.Pipeline.from_components(c).runtime.backend == "torch"


def test_a_vae_file_is_named_in_the_png_and_built_for_a_loaded_pipeline(tiny_folder, tmp_path):
    """A VAE file's pictures say "VAE hash" (its sha256's first 10 hex digits) and "VAE" (its name), as A1111's;
    ``vae_for`` builds the same VAE for a pipeline loaded without it (the server's sd_vae), leaving it as it was."""
    import hashlib

    from safetensors.torch import save_file

    from latentgen.models import ldm

    plain = latentgen.load(tiny_folder)
    moved = {k: v * 1.1 for k, v in plain.vae.state_dict().items()}
    file = tmp_path / "my-vae.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.vae_to_ldm(moved, plain.vae.config, prefix="").items()}, str(file))
    with_file = latentgen.load(tiny_folder, vae=file)
    text = with_file.generate("a cat", steps=1, width=32, height=32)[0].info["parameters"]
    assert text.endswith(f"VAE hash: {hashlib.sha256(file.read_bytes()).hexdigest()[:10]}, VAE: my-vae.safetensors")
    built, own = loading.vae_for(plain, file), plain.vae
    assert all(torch.equal(built.state_dict()[k], moved[k]) for k in moved) and plain.vae is own
    assert built.dtype == own.dtype and "VAE" not in plain.generate("a cat", steps=1, width=32, height=32)[0].info[
        "parameters"]


def test_an_sdxl_folder_takes_a_vae_file(xl_folder, tmp_path):
    """A VAE file with an SDXL folder (its fp16-fixed VAE, say): only the VAE's fit is checked, not the folder's
    text encoders again (two of them, which the VAE check once took for a misfit)."""
    from safetensors.torch import save_file

    from latentgen.models import ldm

    plain = latentgen.load(xl_folder)
    moved = {k: v * 1.1 for k, v in plain.vae.state_dict().items()}
    file = tmp_path / "xl-vae.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.vae_to_ldm(moved, plain.vae.config, prefix="").items()}, str(file))
    got = latentgen.load(xl_folder, vae=file).vae.state_dict()
    assert all(torch.equal(got[k], moved[k]) for k in moved)
