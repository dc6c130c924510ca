"""latentgen.backends.choice: the backend asked for, checked, else the rule's: OpenVINO on CPUs (torch for
fp32 asked for, or without OpenVINO), on CUDA torch.compile's kernels for SD-sized U-Nets and a graph of the
eager ones for small ones, fp32 or without Triton."""

import importlib.util
import sys

import pytest
import torch

from latentgen.backends import choice

CPU = torch.device("cpu")


def test_default_is_openvino_on_cpu_unless_a_dtype_or_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv(choice.ENV, raising=False)
    assert choice.choose(None, CPU, exact=False)[0] == "openvino"
    assert choice.choose(None, CPU, exact=True) == ("torch", "fp32 asked for: torch, diffusers' arithmetic exactly")
    assert choice.choose(None, torch.device("mps"), exact=False) == ("torch", "mps: torch kernels")
    assert choice.choose("torch", CPU, exact=False) == ("torch", "as asked")
    monkeypatch.setattr(choice, "available", lambda: False)
    assert choice.choose(None, CPU, exact=False) == ("torch", "OpenVINO is not installed or does not import")
    with pytest.raises(ValueError, match=r"backend='openvino' \(as asked\) needs the openvino package, and it does "
                                         r"not import: `pip install openvino`"):
        choice.choose("openvino", CPU, exact=False)
    monkeypatch.undo()
    monkeypatch.setenv(choice.ENV, "torch")
    assert choice.choose(None, CPU, exact=False) == ("torch", "$LATENTGEN_BACKEND")


def test_on_cuda_sd_sized_u_nets_compile_small_ones_and_fp32_replay_the_eager_kernels(monkeypatch):
    monkeypatch.delenv(choice.ENV, raising=False)
    cuda, sd15, small = torch.device("cuda"), {"block_out_channels": [320, 640]}, {"block_out_channels": [64]}
    monkeypatch.setattr(choice, "compiler_missing", lambda device: "")
    name, why = choice.choose(None, cuda, exact=False, unet_config=sd15)
    assert name == "compile" and "first call per image size compiles" in why
    assert choice.choose(None, cuda, exact=False)[0] == "compile"  # no config yet (checked before loading)
    name, why = choice.choose(None, cuda, exact=False, unet_config=small)
    assert name == "cudagraph" and "a small U-Net, 64 wide" in why
    name, why = choice.choose(None, cuda, exact=True, unet_config=sd15)
    assert name == "cudagraph" and "fp32 asked for" in why  # the eager kernels, replayed: diffusers' numbers
    assert choice.choose("cudagraph", cuda, exact=False, unet_config=sd15) == ("cudagraph", "as asked")
    monkeypatch.setenv(choice.ENV, "cudagraph")
    assert choice.choose(None, cuda, exact=False, unet_config=sd15) == ("cudagraph", "$LATENTGEN_BACKEND")
    monkeypatch.delenv(choice.ENV)
    monkeypatch.setattr(choice, "compiler_missing", lambda device: "Triton is not installed")
    name, why = choice.choose(None, cuda, exact=False, unet_config=sd15)
    assert name == "cudagraph" and "(Triton is not installed, so torch.compile cannot run)" in why
    monkeypatch.undo()
    if importlib.util.find_spec("triton") is None:  # this machine's CPU torch has none
        assert choice.compiler_missing(cuda) == "Triton is not installed"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # Triton "installed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (6, 1))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla P40")
    assert choice.compiler_missing(cuda) == "Tesla P40 is older than Triton supports (compute capability < 7.0)"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert choice.compiler_missing(cuda) == ""
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    assert choice.compiler_missing(cuda) == "torch.compile does not support this Python"
    monkeypatch.undo()
    assert choice.choose("compile", cuda, exact=False) == ("compile", "as asked")  # asked for: tried, may fall back


def test_an_openvino_that_does_not_import_counts_as_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what a broken native library looks like: import fails
    assert choice.available.__wrapped__() is False


def test_sdxl_runs_on_openvino_on_cpus_and_on_torch_on_cuda_unless_a_cuda_backend_is_asked_for():
    xl, sd = {"addition_embed_type": "text_time"}, {"block_out_channels": [320, 640, 1280, 1280]}
    assert choice.default(CPU, False, xl) == choice.default(CPU, False, sd)  # the CPU rule: OpenVINO unless fp32
    assert choice.default(CPU, True, xl)[0] == "torch"
    assert choice.default(torch.device("cuda"), False, xl) == ("torch", choice.XL_TORCH)
    assert choice.for_model(("compile", "as asked"), xl) == ("compile", "as asked")  # asked by name: its graphs
    assert choice.for_model(("openvino", "as asked"), xl) == ("openvino", "as asked")
    assert choice.for_model(None, xl) is None and choice.for_model(("cudagraph", f"${choice.ENV}"), sd)[0] == "cudagraph"
    name, why = choice.for_model(("cudagraph", f"${choice.ENV}"), xl)  # the environment's, for every model: gives way
    assert name == "torch" and why.endswith(f"over ${choice.ENV}=cudagraph") and "asks for them" in why
