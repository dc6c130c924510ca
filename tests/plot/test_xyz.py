"""latentgen.plot.xyz: A1111's X/Y/Z plot. Axis values as A1111 parses them (ranges, counts, CSV), axes by label or
by A1111's txt2img index; every cell equals its own generate call; every cell is checked before the first is drawn."""

import numpy as np
import pytest

from conftest import mask, max_diff, photo
from latentgen import Hires
from latentgen.plot import values, xyz


@pytest.mark.parametrize("label, text, values", [
    ("Steps", "1-5", (1, 2, 3, 4, 5)), ("Steps", "10-30 (+10)", (10, 20, 30)), ("Seed", "1-10 [4]", (1, 4, 7, 10)),
    ("CFG Scale", "4, 6.5", (4.0, 6.5)), ("CFG Scale", "2-3 [3]", (2.0, 2.5, 3.0)),
    ("Var. strength", "0-0.5 (+0.25)", (0.0, 0.25, 0.5)),
    ("Prompt S/R", 'red, "green, dark", blue', ("red", "green, dark", "blue")), ("Size", "64x64, 96x64", ("64x64", "96x64")),
    (4, "2,3", (2, 3)), (6, "7", (7.0,)), (9, "Euler a, DDIM", ("Euler a", "DDIM")),  # A1111's indices
])
def test_axis_values_as_a1111_parses_them(label, text, values):
    assert xyz.axis(label, text).values == values


@pytest.mark.parametrize("label, text, match", [
    ("Eta", "0.5", r"axis 'Eta' is not one latentgen plots"), (38, "a", r"axis 'Refiner checkpoint' is not one"),
    (99, "1", r"not an A1111 txt2img axis index"), ("Steps", "ten", r"value 'ten' is not a whole number"),
    ("Steps", "", r"has no values"),
])
def test_bad_axes_are_refused(label, text, match):
    with pytest.raises(ValueError, match=match):
        xyz.axis(label, text)


def test_from_a1111_script_args():
    axes = xyz.from_a1111([4, "2,3", [], 0, "", [], 9, "", ["Euler a", "DDIM"], True, False])
    assert [(a.label, a.values) for a in axes] == [("Steps", (2, 3)), ("Sampler", ("Euler a", "DDIM"))]


def test_hires_upscaler_axes_name_model_files_by_stem(upscaler_folder):
    index = values.A1111_TXT2IMG.index("Hires upscaler")
    [a] = xyz.from_a1111([index, "", ["Latent", "2x-compact"]], upscalers_dir=upscaler_folder)
    assert a.values == ("Latent", str(upscaler_folder / "2x-compact.safetensors"))
    assert [xyz.label_of(a, v) for v in a.values] == ["Latent", "2x-compact"]
    with pytest.raises(ValueError, match=r"Hires upscaler='4x-other' is not an upscaler here"):
        xyz.from_a1111([index, "", ["4x-other"]], upscalers_dir=upscaler_folder)


def test_every_cell_is_its_own_call(pipe):
    kw = dict(seed=2, steps=2, guidance=4.0, width=64, height=64)
    p = xyz.plot(pipe, "a red cat", [xyz.axis("Steps", "2, 3"), xyz.axis("Prompt S/R", "red, blue"),
                                     xyz.axis("Sampler", "Euler a, ddim")], **kw)
    assert len(p.cells) == 8 and p.labels[1] == ("Steps: 3", "red", "Euler a") and p.labels[6] == ("Steps: 2", "blue", "ddim")
    want = pipe.generate("a blue cat", seed=2, steps=2, guidance=4.0, width=64, height=64, scheduler="ddim")
    assert max_diff([p.cells[6]], want) == 0
    assert p.grid.width > 2 * 2 * 64 and p.grid.height > 2 * 64  # two sub-grids of 2 x 2, with their labels
    cell = np.asarray(p.cells[0])
    assert any(np.array_equal(np.asarray(p.grid)[y:y + 64, x:x + 64], cell)
               for y in range(0, p.grid.height - 63) for x in range(0, p.grid.width - 63, 1)
               if y < 80 and x < 200)  # the first cell stands in the grid as drawn


def test_a_stop_from_the_callback_ends_the_plot_with_black_cells_after_it(pipe):
    import latentgen

    def stop_in_cell_2(done, total, latents):  # each cell is its own call: steps count 1, 2 in every cell
        seen.append(done)
        if len(seen) == 3:
            raise latentgen.Stop()

    seen, kw = [], dict(seed=2, steps=2, width=64, height=64)
    p = xyz.plot(pipe, "a cat", [xyz.axis("Seed", "2, 3, 4")], callback=stop_in_cell_2, **{**kw, "seed": 0})
    assert seen == [1, 2, 1] and len(p.cells) == 3  # cell 3 never ran
    assert max_diff(p.cells[:1], pipe.generate("a cat", **kw)) == 0  # cell 1 whole; cell 2 its first step's estimate
    assert np.asarray(p.cells[1]).std() > 0 and not np.asarray(p.cells[2]).any()  # cell 3 black, as A1111 leaves it


def test_size_lora_weight_and_hires_axes(fresh, lora_files):
    pipe = fresh  # a tag's LoRA stays parked in the model it was drawn on: not the shared one
    kw = dict(seed=1, steps=2, width=64, height=64)
    tag = f"<lora:{lora_files[0]}:1>"
    p = xyz.plot(pipe, f"a cat {tag}", [xyz.axis("Size", "64x64, 96x64"), xyz.axis("LoRA weight", "0, 0.5")], **kw)
    assert [c.size for c in p.cells] == [(64, 64), (96, 64)] * 2
    assert p.cells[2].info["parameters"].startswith(f"a cat <lora:{lora_files[0]}:0.5>")
    assert max_diff([p.cells[0]], [p.cells[2]]) > 0
    h = xyz.plot(pipe, "a cat", [xyz.axis("Denoising", "0.3, 0.6")], hires=Hires(scale=1.5), **kw)
    assert "Denoising strength: 0.6, Hires upscale: 1.5" in h.cells[1].info["parameters"]


def test_axis_indices_are_a1111_1_10s():
    """x_type indices as A1111 1.10 numbers its txt2img axes (script_args carry them), and its img2img axes: the
    tab's own list, without the Hires axes, with Image CFG Scale and Cond. Image Mask Weight."""
    assert [xyz.axis(i, "1").label for i in (4, 6, 25)] == ["Steps", "CFG Scale", "Clip skip"]
    assert xyz.axis(26, "0.5").label == "Denoising" and xyz.axis(42, "64x64").values == ("64x64",)
    assert values.A1111_TXT2IMG.index("Hires upscaler") == 29 and len(values.A1111_TXT2IMG) == 43
    assert [xyz.axis(i, "1", "img2img").label for i in (4, 5, 9, 24, 25)] == [
        "Steps", "CFG Scale", "Sampler", "Clip skip", "Denoising"]
    assert xyz.axis(41, "64x64", "img2img").label == "Size" and len(values.A1111_IMG2IMG) == 42
    assert xyz.from_a1111([25, "0.3, 0.6", []], mode="img2img")[0] == xyz.Axis("Denoising", (0.3, 0.6))
    with pytest.raises(ValueError, match="axis 'Hires upscaler' is a txt2img axis: img2img has no hires pass"):
        xyz.from_a1111(["Hires upscaler", "Latent", []], mode="img2img")
    with pytest.raises(ValueError, match="axis 'Image CFG Scale' is not one latentgen plots"):
        xyz.axis(6, "1", "img2img")
    with pytest.raises(ValueError, match=r"axis type 42 is not an A1111 img2img axis index \(0-41\)"):
        xyz.axis(42, "1", "img2img")


def test_an_img2img_plot_draws_from_the_picture_and_denoising_is_its_strength(pipe):
    """On A1111's img2img tab the plot's cells are img2img (inpainting with a mask) calls; Denoising sets their
    strength. The Hires axes are txt2img's, and Size does not apply to inpainting: both refused before drawing."""
    kw = dict(seed=2, steps=3, guidance=4.0)
    p = xyz.plot(pipe, "a red cat", [xyz.axis("Denoising", "0.4, 0.8")], image=photo(), strength=0.6, **kw)
    want = [pipe.img2img("a red cat", photo(), strength=s, **kw)[0] for s in (0.4, 0.8)]
    assert max_diff(p.cells, want) == 0 and p.labels[1] == ("Denoising: 0.8", "", "")
    p = xyz.plot(pipe, "a red cat", [xyz.axis("Steps", "2, 3")], image=photo(), mask=mask(), strength=0.9,
                 seed=2, guidance=4.0)
    assert max_diff(p.cells[1:], pipe.inpaint("a red cat", photo(), mask(), strength=0.9, **kw)) == 0
    for axis, message in ((xyz.axis("Hires steps", "2"), "Hires steps: img2img has no hires pass"),
                          (xyz.axis("Denoising", "1.5"), r"Denoising=1.5 is invalid: use 0 to 1")):
        with pytest.raises(ValueError, match=message):
            xyz.plot(pipe, "a cat", [axis], image=photo(), **kw)
    with pytest.raises(ValueError, match="Size: inpainting draws at the picture's own size"):
        xyz.plot(pipe, "a cat", [xyz.axis("Size", "64x64")], image=photo(), mask=mask(), **kw)


def test_checkpoint_name_draws_each_cell_with_its_model(pipe, tiny_folder, tiny_other):
    """A1111's "Checkpoint name" axis: a name (here a folder) is loaded once, a loaded pipeline is used as it is;
    each cell equals that model's own call and says so in its label and PNG."""
    import latentgen

    kw = dict(seed=2, steps=2, guidance=4.0, width=64, height=64)
    other = latentgen.load(tiny_other)
    by_name = xyz.plot(pipe, "a red cat", [xyz.axis("Checkpoint name", f"{tiny_folder}, {tiny_other}"),
                                           xyz.axis("Steps", "2, 3")], **kw)
    assert max_diff([by_name.cells[1]], other.generate("a red cat", **kw)) == 0
    assert max_diff([by_name.cells[0]], pipe.generate("a red cat", **kw)) == 0
    assert by_name.labels[1][0] == other.name and f"Model: {other.name}" in by_name.cells[1].info["parameters"]
    given = xyz.plot(pipe, "a red cat", [xyz.Axis("Checkpoint name", (other, pipe))], **kw)
    assert max_diff([given.cells[0]], [by_name.cells[1]]) == 0 and given.labels[1][0] == pipe.name


def test_prompt_sr_replaces_in_both_prompts_before_the_styles(pipe):
    """A1111's Prompt S/R: the first value searched in the prompt and the negative prompt, each value put in its
    place in both; ``style`` (A1111's prompt styles) then styles each cell's prompts."""
    kw = dict(seed=2, steps=2, guidance=4.0, width=64, height=64)
    p = xyz.plot(pipe, "a red cat", [xyz.axis("Prompt S/R", "red, blue")], negative_prompt="red dog", **kw,
                 style=lambda prompt, negative: (prompt + ", flat", (negative or "") + ", blurry"))
    want = pipe.generate("a blue cat, flat", negative_prompt="blue dog, blurry", **kw)
    assert max_diff([p.cells[1]], want) == 0 and p.cells[1].info["parameters"] == want[0].info["parameters"]
    assert xyz.plot(pipe, "a cat", [xyz.axis("Prompt S/R", "dark, light")], negative_prompt="dark", **kw).cells


def test_prompt_order_plots_every_order_of_the_words(pipe):
    """A1111's Prompt order: its values are words of the prompt, each cell one order of them in their places."""
    a = xyz.axis(8, "red, cat")  # A1111's txt2img index of Prompt order
    assert a.label == "Prompt order" and a.values == (("red", "cat"), ("cat", "red"))
    assert len(xyz.axis("Prompt order", "a, b, c").values) == 6
    kw = dict(seed=2, steps=2, width=64, height=64)
    p = xyz.plot(pipe, "a red cat", [a], **kw)
    assert p.labels == [("red, cat", "", ""), ("cat, red", "", "")]
    assert max_diff(p.cells[1:], pipe.generate("a cat red", **kw)) == 0
    with pytest.raises(ValueError, match="Prompt order: 'dog' is not in the prompt"):
        xyz.plot(pipe, "a red cat", [xyz.axis("Prompt order", "red, dog")], **kw)


def test_schedule_type_puts_each_schedule_on_the_cells_sampler_whatever_the_axis_order(pipe):
    kw = dict(seed=2, steps=2, width=64, height=64)
    p = xyz.plot(pipe, "a cat", [xyz.axis("Schedule type", "automatic, Karras"), xyz.axis("Sampler", "DPM++ 2M, Euler")],
                 **kw)  # the schedule axis before the sampler's: each cell still gets both
    assert p.labels[1] == ("Karras", "DPM++ 2M", "")
    assert max_diff(p.cells[1:2], pipe.generate("a cat", scheduler="dpm++2m_karras", **kw)) == 0
    assert max_diff(p.cells[:1], pipe.generate("a cat", scheduler="dpm++2m", **kw)) == 0
    assert "Sampler: DPM++ 2M Karras" in p.cells[1].info["parameters"]
    with pytest.raises(ValueError, match="Schedule type 'Exponential' is not one"):
        xyz.axis(17, "Exponential")  # A1111's index of Schedule type
    with pytest.raises(ValueError, match="sampler 'Euler a' has no Karras schedule here"):
        xyz.plot(pipe, "a cat", [xyz.axis("Schedule type", "Karras")], scheduler="euler_a", **kw)


def test_styles_axis_applies_its_styles_after_the_calls_own(pipe):
    from latentgen.text.styles import Style

    table = {"blue": Style("blue", "{prompt} on blue", "red"), "flat": Style("flat", "flat colors")}
    kw = dict(seed=2, steps=2, width=64, height=64)
    p = xyz.plot(pipe, "a cat", [xyz.axis("Styles", 'blue, "flat,blue"')], styles=table, **kw,
                 style=lambda prompt, negative: (prompt + ", big", negative))
    assert p.labels == [("blue", "", ""), ("flat,blue", "", "")]
    assert max_diff(p.cells[1:], pipe.generate("a cat, big, flat colors on blue", negative_prompt="red", **kw)) == 0
    with pytest.raises(ValueError, match=r"the Styles axis \(plot's styles= table\): no style 'dark'; the styles are 'blue'"):
        xyz.plot(pipe, "a cat", [xyz.axis("Styles", "dark")], styles=table, **kw)
    with pytest.raises(ValueError, match="no style 'blue'; the styles are none"):
        xyz.plot(pipe, "a cat", [xyz.axis("Styles", "blue")], **kw)


def test_vae_axis_decodes_each_cell_with_its_vae_file(pipe, tiny_folder, vae_file, tmp_path):
    """A1111's VAE axis: each cell drawn with that VAE file, as ``latentgen.load(..., vae=file)`` draws, and says so in
    its PNG; "Automatic" is the model's own, which the model has again after the plot; a missing file is refused
    before the first cell draws."""
    import latentgen

    kw, own = dict(seed=2, steps=2, width=64, height=64), pipe.vae
    p = xyz.plot(pipe, "a cat", [xyz.Axis("VAE", ("Automatic", str(vae_file)))], **kw)
    assert p.labels == [("Automatic", "", ""), ("my-vae.safetensors", "", "")] and pipe.vae is own
    assert max_diff(p.cells[1:], latentgen.load(tiny_folder, vae=vae_file).generate("a cat", **kw)) <= 1
    assert max_diff(p.cells[:1], pipe.generate("a cat", **kw)) == 0 and max_diff(p.cells[:1], p.cells[1:]) > 2
    assert "VAE: my-vae.safetensors" in p.cells[1].info["parameters"] and "VAE" not in p.cells[0].info["parameters"]
    with pytest.raises(FileNotFoundError, match="VAE axis value .*nope.pt' is not a file"):
        xyz.plot(pipe, "a cat", [xyz.axis("VAE", f"Automatic, {tmp_path / 'nope.pt'}")], callback=pytest.fail, **kw)


def test_refiner_switch_at_moves_the_calls_refiners_hand_over(pipe, xl_folder, xl_refiner_folder):
    import latentgen

    base, kw = latentgen.load(xl_folder), dict(seed=1, steps=4, width=64, height=64)
    refiner = latentgen.Refiner(latentgen.load(xl_refiner_folder), switch_at=0.8)
    p = xyz.plot(base, "a cat", [xyz.axis(39, "0.5, 0.75")], refiner=refiner, **kw)  # A1111's index of the axis
    assert p.labels[0] == ("Refiner switch at: 0.5", "", "") and refiner.switch_at == 0.8
    want = base.generate("a cat", refiner=latentgen.Refiner(refiner.model, switch_at=0.5), **kw)
    assert max_diff(p.cells[:1], want) == 0 and "Refiner switch at: 0.75" in p.cells[1].info["parameters"]
    with pytest.raises(ValueError, match="Refiner switch at: the call has no refiner"):
        xyz.plot(pipe, "a cat", [xyz.axis("Refiner switch at", "0.5")], **kw)
    with pytest.raises(ValueError, match="Refiner switch at=1.5 is invalid"):
        xyz.plot(base, "a cat", [xyz.axis("Refiner switch at", "0.5, 1.5")], refiner=refiner, callback=pytest.fail, **kw)


def test_every_cell_is_checked_before_the_first_is_drawn(pipe, monkeypatch):
    monkeypatch.setattr(pipe.text_encoder, "forward", lambda *a, **k: pytest.fail("drew before refusing"))
    with pytest.raises(ValueError, match=r"Prompt S/R did not find 'green' in the prompt or the negative prompt"):
        xyz.plot(pipe, "a red cat", [xyz.axis("Prompt S/R", "green, blue")], negative_prompt="dark", width=64, height=64)
    with pytest.raises(ValueError, match=r"steps=0 is invalid"):
        xyz.plot(pipe, "a cat", [xyz.axis("Steps", "2, 0")], width=64, height=64)
    with pytest.raises(ValueError, match=r"sampler 'Euler z' is unknown"):
        xyz.plot(pipe, "a cat", [xyz.axis("Sampler", "Euler a, Euler z")], width=64, height=64)
    with pytest.raises(ValueError, match=r"hires.strength=1.5 is invalid"):
        xyz.plot(pipe, "a cat", [xyz.axis("Denoising", "0.5, 1.5")], width=64, height=64)
    with pytest.raises(ValueError, match=r"4 axes: give one to three"):
        xyz.plot(pipe, "a cat", [xyz.axis("Steps", "2")] * 4)
