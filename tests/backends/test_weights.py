"""latentgen.backends.weights: a LoRA layer's effective weight is what peft's merge (``fuse_lora``) writes; the
cheap state moves with a scale, a fuse, a load and an unload; ``changed`` reads a tensor again only when it moved
or was written through torch, or when told; ``plain`` is a LoRA-free copy that leaves the module as it was."""

import torch

import latentgen
from latentgen.backends import weights


def test_effective_weights_are_what_a_fuse_writes(tiny_folder, lora_files):
    pipe = latentgen.load(tiny_folder, backend="torch")
    bare, _ = weights.effective(pipe.unet)
    pipe.load_lora(lora_files[0], name="a", scale=0.7)
    tensors, fresh = weights.effective(pipe.unet)
    assert fresh and fresh <= tensors.keys() and tensors.keys() == bare.keys()  # the plain names, no lora_A/B
    assert all(torch.equal(tensors[n], bare[n]) for n in tensors if n not in fresh)
    assert all(not torch.equal(tensors[n], bare[n]) for n in fresh)
    pipe.fuse_lora()
    fused, _ = weights.effective(pipe.unet)  # merged: the base weights hold the deltas, none is added again
    assert all(torch.equal(fused[n], tensors[n]) for n in fresh)
    pipe.unfuse_lora()
    pipe.unload_lora()
    assert all(torch.equal(t, bare[n]) for n, t in weights.effective(pipe.unet)[0].items())


def test_the_state_moves_with_every_lora_change(tiny_folder, lora_files):
    pipe = latentgen.load(tiny_folder, backend="torch")
    seen = [weights.state(pipe.unet, 0)]
    pipe.load_lora(lora_files[0], name="a", scale=0.7)
    seen.append(weights.state(pipe.unet, 0))
    pipe.set_lora_scale("a", 0.3)
    seen.append(weights.state(pipe.unet, 0))
    pipe.fuse_lora()
    seen.append(weights.state(pipe.unet, 0))
    pipe.unfuse_lora()
    assert weights.state(pipe.unet, 0) == seen[2]  # back to the same: unfused at 0.3
    pipe.unload_lora()
    assert weights.state(pipe.unet, 0) == seen[0] and len(set(seen)) == 4


def test_the_convolutions_padding_is_in_the_state_and_the_cache_key_and_a_lora_leaves_it(tiny_folder, tmp_path):
    from latentgen.canvas import seamless
    from test_runtime import _wide_lora

    pipe = latentgen.load(tiny_folder, backend="torch")
    plain, key = weights.state(pipe.unet, 0), weights.fingerprint(pipe.unet, "r", {})
    assert weights.padding(pipe.unet) == ()
    with seamless.circular([pipe.unet]):
        wrapped = weights.padding(pipe.unet)
        assert wrapped and {mode for _, mode in wrapped} == {"circular"}
        assert weights.state(pipe.unet, 0)[:-1] == plain[:-1] and weights.state(pipe.unet, 0) != plain
        assert weights.fingerprint(pipe.unet, "r", {}) != key
    assert weights.state(pipe.unet, 0) == plain and weights.fingerprint(pipe.unet, "r", {}) == key
    pipe.load_lora(_wide_lora(pipe, tmp_path / "a.safetensors"))  # peft's layers on the 3x3 convolutions
    with seamless.circular([pipe.unet]):
        assert weights.padding(pipe.unet) == wrapped  # the plain names: no conversion of its own for a LoRA


def test_changed_reads_a_tensor_again_only_when_it_moved_or_was_written(tiny_folder, monkeypatch):
    pipe = latentgen.load(tiny_folder, backend="torch")
    tensors, fresh = weights.effective(pipe.unet)
    record, known = {n: weights.tensor_hash(t) for n, t in tensors.items()}, {}
    assert weights.changed(tensors, record, known, fresh) == {}
    hashed, real = [], weights.tensor_hash
    monkeypatch.setattr(weights, "tensor_hash", lambda t: hashed.append(1) or real(t))
    assert weights.changed(tensors, record, known, fresh) == {} and hashed == []  # nothing moved: nothing read
    w = pipe.unet.conv_in.weight
    with torch.no_grad():
        w.mul_(2)  # counted by torch
    diff = weights.changed(weights.effective(pipe.unet)[0], record, known)
    assert list(diff) == ["conv_in.weight"] and len(hashed) == 1
    w.data.div_(2)  # not counted: only an announcement (known cleared) makes it read again
    assert list(weights.changed(weights.effective(pipe.unet)[0], record, known)) == ["conv_in.weight"]
    known.clear()
    assert weights.changed(weights.effective(pipe.unet)[0], record, known) == {}


def test_plain_is_a_lora_free_float_copy(tiny_folder, lora_files):
    pipe = latentgen.load(tiny_folder, backend="torch", dtype="bf16")
    assert weights.plain(pipe.unet) is not pipe.unet  # bf16: a float copy
    pipe.load_lora(lora_files[0], name="a")
    twin = weights.plain(pipe.unet)
    assert twin.dtype == torch.float32 and not weights.lora_layers(twin) and weights.lora_layers(pipe.unet)
    assert dict(twin.named_parameters()).keys() == weights.effective(pipe.unet)[0].keys()
