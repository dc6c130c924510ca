"""latentgen.canvas.seamless: A1111's Tiling. A tiling picture is a torus picture (drawn from its start noise rolled
by whole U-Net cells, it is the same picture rolled), on torch and on the converted U-Net; the networks pad with
zeros again after the call, whatever it raised; bad values and a tiled decode are refused before drawing."""

from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from conftest import max_diff, photo, mask

import latentgen
from latentgen import request, starts
from latentgen.backends import choice
from latentgen.canvas import seamless


def _zero_padded(*modules) -> int:
    return sum(isinstance(m, torch.nn.Conv2d) and m.padding_mode == "zeros" and any(m.padding)
               for net in modules for m in net.modules())


def _rolled_draw(pipe, k: int, tiling: bool, seed: int = 4) -> np.ndarray:
    """A txt2img picture drawn from its start noise rolled by k latent cells down and right (a first-order,
    noise-free sampler: the start is all the randomness)."""
    s = pipe.settings(steps=4, guidance=6.0, scheduler="euler", width=64, height=64, tiling=tiling, seed=seed)
    draws = request.draws("a cat", None, 1, seed, s)
    f, c = pipe.vae_scale_factor, pipe.vae.config.latent_channels

    def start(sched, seeds, dtype):
        st = starts.from_noise(sched, seeds, dtype, shape=(c, 64 // f, 64 // f), device=pipe.device)
        return replace(st, latents=torch.roll(st.latents, (k, k), (2, 3)))
    return np.asarray(pipe.sample(draws, s, start)[0]).astype(int)


def _torus_error(pipe, tiling: bool) -> tuple[int, int]:
    """(max pixel difference between the rolled start's picture and the picture rolled, k in pixels)."""
    k = 2 ** (len(pipe.unet.config.block_out_channels) - 1)  # whole cells of the U-Net's deepest level
    a, b = _rolled_draw(pipe, 0, tiling), _rolled_draw(pipe, k, tiling)
    px = k * pipe.vae_scale_factor
    return int(np.abs(np.roll(a, (px, px), (0, 1)) - b).max()), px


def test_a_tiling_picture_wraps_around_and_a_plain_one_does_not(pipe):
    err, px = _torus_error(pipe, tiling=True)
    assert px > 0 and err <= 1  # the same picture, rolled: attention sums the rolled keys in another order
    assert _torus_error(pipe, tiling=False)[0] > 10  # zero padding: the picture knows where its edges are
    plain, tiled = (pipe.generate("a cat", seed=2, steps=4, tiling=t)[0] for t in (False, True))
    assert "Tiling: True" in tiled.info["parameters"] and "Tiling" not in plain.info["parameters"]
    assert max_diff([plain], [tiled]) > 10
    hires = pipe.generate("a cat", seed=2, steps=2, clip_skip=2, tiling=True, hires=latentgen.Hires(steps=1))[0]
    assert hires.info["parameters"].endswith(  # in A1111's order: its fixed fields, then the hires fix's
        f"Model: {pipe.name}, Denoising strength: 0.7, Clip skip: 2, Tiling: True, Hires upscale: 2, Hires steps: 1, "
        f"Hires upscaler: Latent")


def test_the_networks_pad_with_zeros_again_after_the_call_whatever_it_raised(pipe):
    before = _zero_padded(pipe.unet, pipe.vae)
    first = pipe.generate("a cat", seed=1, steps=3)
    for call in (lambda: pipe.generate("a cat", seed=1, steps=3, tiling=True),
                 lambda: pipe.img2img("a cat", photo(), seed=1, steps=3, tiling=True),
                 lambda: pipe.inpaint("a cat", photo(), mask(), seed=1, steps=3, tiling=True)):
        call()
        assert _zero_padded(pipe.unet, pipe.vae) == before > 0

    def fail(done, total, latents):
        assert _zero_padded(pipe.unet) == 0  # during the call: every padded convolution wraps around
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        pipe.generate("a cat", seed=1, steps=3, tiling=True, callback=fail)
    assert _zero_padded(pipe.unet, pipe.vae) == before
    assert max_diff(first, pipe.generate("a cat", seed=1, steps=3)) == 0  # the model as it was


def test_overlapping_calls_wrap_until_the_last_ends_and_a_padding_set_by_hand_stays():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Conv2d(3, 3, 3, padding=1,
                                                                                padding_mode="reflect"))
    with seamless.circular([net]):
        with seamless.circular([net, net]):  # another thread's call, listing the module twice
            assert net[0].padding_mode == "circular"
        assert net[0].padding_mode == "circular"  # the first call still runs
    assert [c.padding_mode for c in net] == ["zeros", "reflect"] and not seamless._WRAPPED


def test_the_networks_of_the_call_are_those_it_runs(pipe, fresh, controlnets):
    from diffusers import ControlNetModel

    net = ControlNetModel.from_pretrained(controlnets[0])
    seen = []
    pipe.generate("a cat", seed=1, steps=2, tiling=True, control=latentgen.Control(photo(), model=net),
                  callback=lambda *a: seen.append(_zero_padded(net)))
    assert seen and set(seen) == {0} and _zero_padded(net) > 0  # the ControlNet wraps too, then not
    nets = seamless.networks(pipe, unet=fresh.unet, refiner=latentgen.Refiner(fresh))  # the 9-channel U-Net's place
    assert [n is fresh.unet for n in nets] == [True, False, True] and nets[1] is pipe.vae  # the refiner's U-Net too
    assert not any(n is pipe.unet or n is fresh.vae for n in nets)


def test_bad_values_and_a_tiled_decode_are_refused_before_drawing(pipe, monkeypatch):
    for bad in ("yes", 1, None):
        with pytest.raises(TypeError, match="tiling must be True or False"):
            pipe.generate("a cat", tiling=bad)
    ran = []
    monkeypatch.setattr(pipe, "denoise", lambda *a, **k: ran.append(1))
    monkeypatch.setattr(pipe.limits, "vae_tiling", True)
    with pytest.raises(ValueError, match="tiling=True decodes each picture whole.*vae_tiling=True"):
        pipe.generate("a cat", tiling=True)
    assert not ran and _zero_padded(pipe.unet) > 0
    seamless.check_decode(latentgen.memory.Plan(vae_tiling=True, vae_batch=1), True, pipe.limits,
                          vae=object())  # a tiny VAE (no tiled decode) decodes whole anyway


@pytest.mark.skipif(not choice.available(), reason="openvino is a dependency; this platform has no wheel")
def test_the_converted_unet_draws_the_tiling_picture_and_then_the_plain_one_again(tiny_folder, pipe, controlnets):
    fast = latentgen.load(tiny_folder, backend="openvino")
    kw = dict(seed=3, steps=8, guidance=6.0)
    for tiling in (False, True, False, True):  # each padding its own graph, both held
        assert max_diff(fast.generate("a cat", tiling=tiling, **kw), pipe.generate("a cat", tiling=tiling, **kw)) <= 1
    held = {slot[1]: h.base for slot, h in fast.runtime._compiled.items()}
    assert len(held) == 2 and all(held.values()) and "ran torch" not in repr(fast)  # no padding, and circular
    same = partial(fast.img2img, "a dog", photo(), seed=5, steps=8, strength=0.6, tiling=True)
    assert max_diff(same(), pipe.img2img("a dog", photo(), seed=5, steps=8, strength=0.6, tiling=True)) <= 1
    with seamless.circular([fast.unet]), seamless.circular([pipe.unet]):  # by hand, as diffusers' users do
        assert max_diff(fast.generate("a cat", **kw), pipe.generate("a cat", **kw)) <= 1  # not the plain graph
    assert len(fast.runtime._compiled) == 2
    ctl = dict(control=latentgen.Control(photo(), model=controlnets[0], weight=1.5), tiling=True, **kw)
    assert max_diff(fast.generate("a cat", **ctl), pipe.generate("a cat", **ctl)) <= 1  # the ControlNet's own graph
