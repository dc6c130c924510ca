"""latentgen.embedded.quality: the evaluator reads the procedural data (>= 99% right, held-out vocabulary
included) and the adherence prompts cover the vocabulary."""

import pytest
from PIL import Image

from latentgen.embedded import quality, shapes


@pytest.mark.parametrize("size", [64, 128])
def test_evaluator_reads_the_data(size):
    n, right = 600, {"background": 0, "color": 0, "shape": 0, "centroid": 0}
    for seed in range(n):
        image, s = shapes.sample(seed, size)
        r = shapes.read(image)
        right["background"] += r.background == s.background
        right["color"] += r.color == s.color
        right["shape"] += r.shape == s.shape
        right["centroid"] += r.centroid is not None and abs(r.centroid[0] - s.cx) < 0.1 * size
    assert all(v >= 0.99 * n for v in right.values()), right


def test_evaluator_reads_the_held_out_vocabulary():
    n, right = 300, 0
    for seed in range(n):
        image, s = shapes.sample(seed, colors=("purple",), shapes=shapes.ALL_SHAPES)
        r = shapes.read(image)
        right += (r.color, r.shape, r.background) == ("purple", s.shape, s.background)
    assert right >= 0.99 * n


def test_evaluator_reports_a_missing_shape():
    r = shapes.read(Image.new("RGB", (64, 64), shapes.PALETTE["green"]))
    assert (r.background, r.color, r.shape) == ("green", None, None)


def test_adherence_prompts_cover_every_color_and_shape_twice():
    prompts = quality.adherence_prompts()
    assert len(prompts) == 42 == len(set(prompts))
    parsed = [quality.parse(p) for p in prompts]
    for color in shapes.COLORS:
        for kind in shapes.SHAPES:
            bgs = {bg for c, k, bg in parsed if (c, k) == (color, kind)}
            assert len(bgs) == 2 and color not in bgs
    assert {bg for *_, bg in parsed} == set(shapes.COLORS)
    with pytest.raises(ValueError, match="not of the form"):
        quality.parse("a red thing")


def test_off_palette_is_zero_on_the_data_and_soft_edges():
    for seed in range(200):
        image, _ = shapes.sample(seed, colors=tuple(shapes.PALETTE), shapes=shapes.ALL_SHAPES)
        off = shapes.off_palette(image)
        assert off.fraction == 0 and off.clusters == 0, seed
    big, s = shapes.sample(3, size=256)
    soft = big.resize((64, 64), Image.BOX)  # anti-aliased edges: every pixel a blend of the two colors
    assert shapes.off_palette(soft).fraction == 0


def test_off_palette_counts_specks():
    import numpy as np

    image, s = shapes.sample(5)
    a = np.asarray(image).copy()
    a[2, 2] = (0, 255, 255)  # one stray pixel: off-palette, but no speck
    one = shapes.off_palette(Image.fromarray(a))
    assert one.fraction == 1 / 64**2 and one.clusters == 0 and one.mask[2, 2]
    a[60:62, 60:62] = (0, 255, 255)  # a 2x2 speck
    a[3, 3] = (255, 0, 255)  # touches (2, 2) diagonally: a second speck
    two = shapes.off_palette(Image.fromarray(a))
    assert two.fraction == 6 / 64**2 and two.clusters == 2


def test_inpaint_holes_cover_15_to_45_percent_on_and_off_the_grid():
    import random

    rng = random.Random(0)
    for on_grid in (True, False):
        boxes = [quality.inpaint_hole(rng, 64, on_grid) for _ in range(200)]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert 0.15 <= (x1 - x0) * (y1 - y0) / 64**2 <= 0.45
        off = [b for b in boxes if any(v % 8 for v in b)]
        assert (not off) if on_grid else len(off) > 150


def test_the_hole_background_leaves_out_the_shape_and_its_soft_edge():
    """A red square filling a blue hole but for a 1-pixel ring of blend: no background to judge; a wider margin of
    true blue is the background; a 'background' 30 RGB off shows as a seam-sized error."""
    import numpy as np

    red, blue = shapes.PALETTE["red"], shapes.PALETTE["blue"]
    hole = np.empty((20, 20, 3), np.float32)
    hole[:] = (np.float32(red) + np.float32(blue)) / 2 + np.float32([0, 0, 20])  # the ring: a blend, nearer blue
    hole[1:-1, 1:-1] = red
    assert len(quality.hole_background(hole, red, blue)) == 0
    hole[:] = blue
    hole[6:14, 6:14] = red
    back = quality.hole_background(hole, red, blue)
    assert len(back) == 400 - 12 * 12 and np.all(back == np.float32(blue))  # 2 px around the square left out
    off = hole.copy()
    off[hole[..., 0] != red[0]] += np.float32([0, 30, 0])
    assert np.linalg.norm(np.median(quality.hole_background(off, red, blue), 0) - np.float32(blue)) == 30


class IdentityVAE:
    """A 'VAE' whose latents are the pixels: the round trip loses nothing."""

    device, dtype = "cpu", None

    def encode(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

    def decode(self, z):
        from types import SimpleNamespace

        return SimpleNamespace(sample=z)


def test_inpaint_ceiling_through_a_lossless_vae_is_the_drawn_shapes():
    """The largest data-shaped shape centered in each yardstick hole fills >= 35% of it, even a triangle (half
    its box) in a 4:3 hole; through a lossless VAE the ceiling is then 100% for every color."""
    import torch

    vae = IdentityVAE()
    vae.dtype = torch.float32
    r = quality.inpaint_ceiling(vae, colors=("red", "white"), seeds=range(6))
    assert set(r["shapes"]) == set(shapes.SHAPES)
    assert all(d == {"drawn": 1.0, "decoded": 1.0} for d in r["shapes"].values()), r
    assert r["success"] == {"red": 1.0, "white": 1.0}


def test_inpaint_cases_rotate_shapes_and_backgrounds_with_the_seed():
    cases = list(quality.inpaint_cases(("red",), range(6), 64))
    assert [c[2] for c in cases] == list(shapes.SHAPES) * 2
    assert all(bg != "red" for _, _, _, bg, _ in cases) and len({bg for _, _, _, bg, _ in cases}) == 6
    assert cases == list(quality.inpaint_cases(("red",), range(6), 64))  # a function of (color, seed)


def test_round_trip_of_a_lossless_vae_is_clean_and_a_noisy_one_is_not():
    """quality.round_trip: a lossless VAE gives MSE 0, every shape read back, no off-palette pixel; one whose
    decoder adds a colored dot to every image is caught (speckled 1.0) while the shapes still read."""
    import torch

    vae = IdentityVAE()
    vae.dtype = torch.float32
    r = quality.round_trip(vae, n=20)
    assert set(r) == set(shapes.ALL_SHAPES)
    assert all(d == {"mse": 0.0, "read": 1.0, "off_palette": 0.0, "speckled": 0.0} for d in r.values()), r

    class DotVAE(IdentityVAE):
        def decode(self, z):
            z = z.clone()
            z[:, :, 1:3, 1:3] = torch.tensor([0.2, -0.9, 0.6])[:, None, None]  # a 2x2 speck in a corner
            return super().decode(z)

    dotted = DotVAE()
    dotted.dtype = torch.float32
    r = quality.round_trip(dotted, n=20, kinds=("circle",))["circle"]
    assert r["speckled"] == 1.0 and r["off_palette"] > 0 and r["read"] >= 0.9 and r["mse"] > 0
