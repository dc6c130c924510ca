"""latentgen.precision: the default dtype per device and model (bf16 + channels_last on CPUs with native
bf16 for SD-sized U-Nets, fp32 for small ones and elsewhere, fp16 on CUDA), and repr(pipe) says which."""

import pytest
import torch

import latentgen
from latentgen import precision

SD = {"block_out_channels": [320, 640, 1280, 1280]}
SMALL = {"block_out_channels": [64, 128]}


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)


def test_cuda_defaults_to_fp16():
    assert precision.default_dtype(torch.device("cuda"), SD)[0] == torch.float16


def test_cpu_with_bf16_uses_it_for_sd_sized_unets_only(bf16_cpu):
    cpu = torch.device("cpu")
    assert precision.default_dtype(cpu, SD) == (torch.bfloat16, "CPU with native bf16 and a 320-wide U-Net: "
                                                                "bf16 + channels_last")
    dtype, why = precision.default_dtype(cpu, SMALL)
    assert dtype == torch.float32 and "small U-Net" in why


def test_cpu_without_bf16_stays_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.default_dtype(torch.device("cpu"), SD)[0] == torch.float32


@pytest.mark.parametrize("flags, has", [("fpu sse avx512f avx512_bf16 amx_tile", True),
                                        ("fpu sse amx_bf16", True), ("fpu sse avx2 avx512f", False)])
def test_the_cpu_flags_are_read(flags, has):
    assert precision.flags_have_bf16(f"processor\t: 0\nflags\t\t: {flags}\n") is has


def test_an_explicit_dtype_wins_and_fp32_keeps_diffusers_layout(bf16_cpu):
    assert precision.resolve_dtype("fp32", torch.device("cpu"), SD)[0] == torch.float32
    assert precision.resolve_dtype(None, torch.device("cpu"), SD)[0] == torch.bfloat16
    assert precision.resolve_dtype(None, torch.device("cpu"), SMALL)[0] == torch.float32
    assert not precision.wants_channels_last(torch.device("cpu"), torch.float32)


def test_bf16_runs_channels_last_and_repr_says_so(tiny_folder, bf16_cpu):
    pipe = latentgen.load(tiny_folder, dtype="bf16")
    conv = pipe.unet.conv_in.weight
    assert conv.dtype == torch.bfloat16 and conv.is_contiguous(memory_format=torch.channels_last)
    assert "bfloat16, channels_last (as asked; the default here: CPU with native bf16, but a small U-Net" in repr(pipe)
    assert pipe.generate("a red circle", steps=2)[0].size == (64, 64)


def test_the_default_load_says_why(pipe):
    assert "float32 (the default here:" in repr(pipe)
