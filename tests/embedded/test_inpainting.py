"""latentgen.embedded.inpainting: the masks stage 4 trains on, the 9-channel copy of a U-Net, and
``Pipeline.inpaint`` running a model's shipped inpainting variant (tiny random models)."""

import random

import numpy as np
import pytest
import torch
from conftest import mask, max_diff, photo, random_lora

import latentgen
from latentgen.embedded import inpainting, shapes
from latentgen.pipeline import Pipeline


def test_masks_cover_every_kind_on_and_off_the_latent_grid():
    rng = random.Random(0)
    examples = [inpainting.random_example(rng, 64, shapes.random_scene(rng, 64)) for _ in range(400)]
    masks = [m for _, _, m in examples]
    assert all(m.shape == (64, 64) and set(np.unique(m)) <= {0.0, 1.0} for m in masks)
    full = [m.all() for m in masks]
    assert 0.08 < np.mean(full) < 0.25  # "whole": text-to-image within the variant
    covered = [m[int(s.cy), int(s.cx)] == 1 and m.sum() < 64 * 64 for s, _, m in examples]
    assert np.mean(covered) > 0.45  # object masks (and some others) put the shape in the hole
    edges = [m for m in masks if 0 < m.sum() < 64 * 64]
    off_grid = [m for m in edges if (m.reshape(8, 8, 8, 8).mean(axis=(1, 3)) % 1).any()]
    assert 0.5 * len(edges) < len(off_grid) < len(edges)
    for s, picture, m in examples:  # outside the hole, always the scene as drawn
        assert np.array_equal(np.asarray(picture)[m == 0], np.asarray(shapes.draw(s, 64))[m == 0])


def test_an_object_hole_holds_the_largest_shape_and_a_triangle_spans_it():
    rng = random.Random(1)
    holes = {k: 0 for k in shapes.SHAPES}
    for _ in range(400):
        s, picture, m = inpainting.random_example(rng, 64, shapes.random_scene(rng, 64))
        ys, xs = np.nonzero(m)
        rectangle = 0 < m.sum() < 64 * 64 and m.sum() == (np.ptp(xs) + 1) * (np.ptp(ys) + 1)
        if not rectangle or m[int(s.cy), int(s.cx)] == 0:
            continue  # not a rectangular hole with the shape in it
        r = shapes.read(picture)
        if r.shape is None or abs(r.centroid[0] - xs.mean()) > 1:
            continue  # a box that happens to cover the shape: the scene as drawn
        fg = np.nonzero((np.asarray(picture) != shapes.PALETTE[s.background]).any(-1))
        assert (r.color, r.shape, r.background) == (s.color, s.shape, s.background)
        w, h, fw, fh = np.ptp(xs), np.ptp(ys), np.ptp(fg[1]), np.ptp(fg[0])
        if s.shape == "triangle":  # as wide and as tall as the hole
            assert w - 4 <= fw <= w and h - 4 <= fh <= h
        else:  # its short side
            assert min(w, h) - 4 <= fw <= min(w, h) and abs(fw - fh) <= 1
        holes[s.shape] += 1
    assert all(n > 20 for n in holes.values()), holes


def test_the_nine_channel_copy_starts_as_the_base_unet(pipe):
    """Zero-initialised extra channels: whatever the mask and masked latents, the output is the base U-Net's."""
    nine = inpainting.nine_channel_unet(pipe.unet)
    assert nine.config.in_channels == 9 and pipe.unet.config.in_channels == 4
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 8, 8, generator=g)
    text = torch.randn(2, 77, pipe.text_encoder.config.hidden_size, generator=g)
    with torch.no_grad():
        base = pipe.unet(x, 500, encoder_hidden_states=text).sample
        out = nine(torch.cat([x, cond], 1), 500, encoder_hidden_states=text).sample
    assert torch.allclose(base, out, atol=1e-5)
    assert nine.conv_in.weight.data_ptr() != pipe.unet.conv_in.weight.data_ptr()


@pytest.fixture(scope="module")
def nine(tiny_folder, tmp_path_factory):
    """A 9-channel variant of the tiny model's U-Net with nonzero extra channels, saved as a folder."""
    base = latentgen.load(tiny_folder)
    unet = inpainting.nine_channel_unet(base.unet)
    with torch.no_grad():
        extra = unet.conv_in.weight[:, 4:]
        extra.copy_(torch.randn(extra.shape, generator=torch.Generator().manual_seed(1)) * 0.2)
    folder = tmp_path_factory.mktemp("nine") / "unet"
    unet.save_pretrained(folder)
    return folder


def _with_variant(tiny_folder, folder):
    p = latentgen.load(tiny_folder)
    p.inpaint_unet = folder  # as load() sets it for the embedded default (pipelines/default.json "inpainting")
    return p


def test_inpaint_runs_the_shipped_variant(tiny_folder, nine):
    kw = dict(seed=3, steps=3)
    p = _with_variant(tiny_folder, nine)
    got = p.inpaint("a cat", photo(), mask(), **kw)
    assert p.inpaint_unet.config.in_channels == 9  # loaded on first use
    c = latentgen.load(tiny_folder)
    own = Pipeline(c.tokenizer, c.text_encoder, p.inpaint_unet, c.vae, c.scheduler, defaults=c.defaults)
    assert max_diff(got, own.inpaint("a cat", photo(), mask(), **kw)) == 0  # = a 9-channel model's inpaint
    blend = p.inpaint("a cat", photo(), mask(), variant="blend", **kw)
    assert max_diff(blend, c.inpaint("a cat", photo(), mask(), **kw)) == 0  # = the 4-channel model alone
    assert max_diff(got, blend) > 0
    assert max_diff(p.generate("a cat", seed=1, steps=2), c.generate("a cat", seed=1, steps=2)) == 0


def test_with_a_lora_loaded_inpaint_blends_with_the_base_unet(tiny_folder, nine, tmp_path):
    from latentgen.lora import formats as lora_io

    p = _with_variant(tiny_folder, nine)
    p.load_lora(lora_io.save(random_lora(p), tmp_path / "l.safetensors"))
    kw = dict(seed=3, steps=3)
    assert max_diff(p.inpaint("a cat", photo(), mask(), **kw), p.inpaint("a cat", photo(), mask(), variant="blend", **kw)) == 0
    tagged = _with_variant(tiny_folder, nine)  # a LoRA named by a prompt tag: the same
    path = lora_io.save(random_lora(tagged, seed=1), tmp_path / "t.safetensors")
    got = tagged.inpaint(f"a cat <lora:{path}:1>", photo(), mask(), **kw)
    assert max_diff(got, tagged.inpaint(f"a cat <lora:{path}:1>", photo(), mask(), variant="blend", **kw)) == 0
    assert not isinstance(tagged.inpaint_unet, torch.nn.Module)  # the variant was never needed


def test_bad_variant_is_refused(pipe):
    with pytest.raises(ValueError, match="variant"):
        pipe.inpaint("a cat", photo(), mask(), variant="nine")
