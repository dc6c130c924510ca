"""SDXL through the one loop (latentgen.text.xl): on a tiny random SDXL-shaped model (diffusers folder), latentgen
equals diffusers' StableDiffusionXLPipeline, its img2img and its inpaint pipeline; both encoders' penultimate
states, the pooled embedding, the size numbers and the zeroed empty negative are checked one by one; what SDXL
does not run yet is refused by name."""

import numpy as np
import pytest
import torch

import latentgen
from conftest import diffusers_pipeline, mask, max_diff, photo
from latentgen.text import prompts, xl


@pytest.fixture(scope="module")
def xpipe(xl_folder):
    return latentgen.load(xl_folder)


@pytest.fixture(scope="module")
def xref(xl_folder):
    return diffusers_pipeline("StableDiffusionXLPipeline", xl_folder)


def _gens(seed, n):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.mark.parametrize("negative", [None, "blurry, dark"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_txt2img_matches_diffusers(xpipe, xref, negative, batch_size):
    ours = xpipe.generate("a red circle on grey", seed=3, steps=4, guidance=5.0, negative_prompt=negative,
                          num_images=2, batch_size=batch_size)
    theirs = xref("a red circle on grey", negative_prompt=negative, num_inference_steps=4, guidance_scale=5.0,
                  num_images_per_prompt=2, generator=_gens(3, 2), height=64, width=64).images
    assert max_diff(ours, theirs) <= 2
    other = xpipe.generate("a blue square", seed=3, steps=4, guidance=5.0, negative_prompt=negative)
    assert max_diff(ours[:1], other) > 2  # the prompt reaches the picture
    assert "Steps: 4, Sampler: Euler, CFG scale: 5.0, Seed: 3, Size: 64x64" in ours[0].info["parameters"]


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_img2img_and_inpaint_match_diffusers(xpipe, xl_folder, strength):
    image = photo(64, 1)
    ref = diffusers_pipeline("StableDiffusionXLImg2ImgPipeline", xl_folder)
    ours = xpipe.img2img("a red cat", image, strength=strength, seed=7, steps=5, guidance=6.0)
    theirs = ref("a red cat", image=image, strength=strength, num_inference_steps=5, guidance_scale=6.0,
                 generator=_gens(7, 1)).images
    assert max_diff(ours, theirs) <= 2
    ref = diffusers_pipeline("StableDiffusionXLInpaintPipeline", xl_folder)
    ours = xpipe.inpaint("a red square", image, mask(64), strength=strength, seed=2, steps=5, guidance=6.0,
                         composite=False)
    theirs = ref("a red square", image=image, mask_image=mask(64), strength=strength, num_inference_steps=5,
                 guidance_scale=6.0, generator=_gens(2, 1), height=64, width=64).images
    assert max_diff(ours, theirs) <= 2


def test_an_empty_negative_is_zeros_only_where_the_model_says(xpipe, xref):
    assert (xpipe.defaults.guidance, xpipe.defaults.width) == (5.0, 64)  # diffusers' SDXL default; sample_size * 8
    zeroed = xpipe.generate("a red circle", seed=5, steps=3, guidance=5.0)
    xpipe.xl.force_zeros = False
    xref.register_to_config(force_zeros_for_empty_prompt=False)
    try:
        encoded = xpipe.generate("a red circle", seed=5, steps=3, guidance=5.0)
        theirs = xref("a red circle", num_inference_steps=3, guidance_scale=5.0, generator=_gens(5, 1),
                      height=64, width=64).images
    finally:
        xpipe.xl.force_zeros = True
        xref.register_to_config(force_zeros_for_empty_prompt=True)
    assert max_diff(encoded, theirs) <= 2 and max_diff(zeroed, encoded) > 2


def test_embed_joins_both_penultimate_layers_and_pools_the_first_chunk(xpipe):
    te1, te2, tok2 = xpipe.text_encoder, xpipe.xl.text_encoder_2, xpipe.xl.tokenizer_2
    hidden, pooled = xl.embed("a red circle", xpipe.tokenizer, te1, xpipe.xl)
    ids1 = xpipe.tokenizer("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids2 = tok2("a red circle", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids2[0, -1] == tok2.pad_token_id != xpipe.tokenizer.pad_token_id  # bigG pads with "!"
    with torch.no_grad():
        h1 = te1(ids1, output_hidden_states=True).hidden_states[-2]
        out2 = te2(ids2, output_hidden_states=True)
    assert hidden.shape == (1, 77, 96) and pooled.shape == (1, 32)
    torch.testing.assert_close(hidden, torch.cat([h1, out2.hidden_states[-2]], dim=-1))
    torch.testing.assert_close(pooled, out2.text_embeds)
    skip2, _ = xl.embed("a red circle", xpipe.tokenizer, te1, xpipe.xl, clip_skip=2)
    with torch.no_grad():
        torch.testing.assert_close(skip2[..., :32], te1(ids1, output_hidden_states=True).hidden_states[-3])
    long = ", ".join(["a red circle"] * 30)  # over 75 tokens: two chunks
    hidden, pooled_long = xl.embed(long, xpipe.tokenizer, te1, xpipe.xl)
    first = prompts.tokenize(long, tok2)[0]
    with torch.no_grad():
        torch.testing.assert_close(pooled_long, te2(first.ids[None]).text_embeds)
    assert hidden.shape == (1, 154, 96)
    assert xpipe.encode_prompt("a red circle").shape == (1, 77, 96)
    with pytest.raises(ValueError, match="clip_skip=5 is invalid for SDXL"):
        xl.embed("a red circle", xpipe.tokenizer, te1, xpipe.xl, clip_skip=5)
    # training reads captions as drawing reads a plain prompt (latentgen.training.finetune)
    one, pooled_one = xl.embed("a red circle", xpipe.tokenizer, te1, xpipe.xl)
    with torch.no_grad():
        batch, pooled_batch = xl.batch_embed(torch.cat([ids1, ids1]), torch.cat([ids2, ids2]), te1, te2)
    torch.testing.assert_close(batch[1:], one)  # (a batch of two may take another matmul kernel: not bit for bit)
    torch.testing.assert_close(pooled_batch[1:], pooled_one)


def test_time_ids_are_sizes_as_height_width():
    assert xl.time_ids(96, 64).tolist() == [[64, 96, 0, 0, 64, 96]]
    assert xl.time_ids(96, 64, original=(1024, 768), crop=(8, 16), target=(512, 512)).tolist() == \
        [[768, 1024, 8, 16, 512, 512]]


def test_prompt_editing_switches_hidden_and_pooled_together(xpipe):
    at_zero = xpipe.generate("a [red:blue:0] circle", seed=1, steps=4)
    assert max_diff(at_zero, xpipe.generate("a blue circle", seed=1, steps=4)) == 0
    seen = []
    hook = xpipe.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["added_cond_kwargs"]["text_embeds"].clone()), with_kwargs=True)
    try:
        xpipe.generate("a [red:blue:2] circle", seed=1, steps=4)
    finally:
        hook.remove()
    red, blue = xl.embed("a red circle", xpipe.tokenizer, xpipe.text_encoder, xpipe.xl)[1], \
        xl.embed("a blue circle", xpipe.tokenizer, xpipe.text_encoder, xpipe.xl)[1]
    # A1111's schedule: step i (from 0) reads the first text whose last step is >= i: red at 0-2, blue at 3
    assert [bool(torch.equal(p[1:], red)) for p in seen] == [True, True, True, False]
    assert [bool(torch.equal(p[1:], blue)) for p in seen] == [False, False, False, True]
    assert all(bool((p[0] == 0).all()) for p in seen)  # the empty negative: zeros


def test_the_hires_pass_tells_the_unet_its_own_size(xpipe):
    sizes = []
    hook = xpipe.unet.register_forward_pre_hook(
        lambda m, a, kw: sizes.append(kw["added_cond_kwargs"]["time_ids"][0].tolist()), with_kwargs=True)
    try:
        out = xpipe.generate("a red circle", seed=1, steps=2, hires=latentgen.Hires(scale=2, strength=0.5))
    finally:
        hook.remove()
    assert out[0].size == (128, 128)
    assert sizes[0] == [64, 64, 0, 0, 64, 64] and sizes[-1] == [128, 128, 0, 0, 128, 128]


def test_what_sdxl_does_not_run_yet_is_refused_by_name(xpipe, xl_folder):
    with pytest.raises(ValueError, match="purple.safetensors was made for another architecture"):
        xpipe.generate("a cat <lora:purple:1>", steps=1)  # the embedded model's LoRA
    with pytest.raises(ValueError, match=r"control\[0\].model was made for another U-Net"):  # the embedded model's
        xpipe.generate("a cat", steps=1, control=latentgen.Control(photo(64), model="edges"))
    refiner = dict(xpipe.unet.config, projection_class_embeddings_input_dim=72)  # 5 numbers x 8 + pooled 32
    with pytest.raises(ValueError, match="a refiner's U-Net takes 5 numbers, a base model's 6"):
        xl.check_unet(refiner, xpipe.text_encoder, xpipe.xl)
    assert np.asarray(xpipe.generate("a cat", steps=1)[0]).std() > 0  # and the model still draws


def test_a_folder_is_checked_for_its_second_encoder(xl_folder, tmp_path, monkeypatch):
    import shutil

    from latentgen.models import components

    broken = tmp_path / "xl"
    shutil.copytree(xl_folder, broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(FileNotFoundError, match="text_encoder_2/config.json"):
        latentgen.load(broken)
    refiner = tmp_path / "refiner"
    refiner.mkdir()
    (refiner / "model_index.json").write_text('{"text_encoder": [null, null], "text_encoder_2": '
                                              '["transformers", "CLIPTextModelWithProjection"]}')
    with pytest.raises(FileNotFoundError, match="missing: unet/.*tokenizer_2/.*text_encoder_2/config.json") as e:
        latentgen.load(refiner)  # a refiner: no text_encoder/ needed
    assert "text_encoder/" not in str(e.value).replace("text_encoder_2/", "")
    p = components.load_preset("tiny-random")
    with pytest.raises(ValueError, match="needs the model's text_encoder_2"):
        components.check_fit(p.unet, p.vae, p.text_encoder, p.text_encoder)
    monkeypatch.delenv("LATENTGEN_BACKEND")
    assert "U-Net on openvino" in repr(latentgen.load("tiny-random-xl"))  # the CPU's rule, as for SD 1.x


def test_a_9_channel_sdxl_inpainting_unet_matches_diffusers(xl_folder, tmp_path):
    """SDXL's inpainting U-Net (latents + mask + masked-image latents) as diffusers' SDXL inpaint pipeline runs it."""
    from diffusers import UNet2DConditionModel

    ref = diffusers_pipeline("StableDiffusionXLInpaintPipeline", xl_folder)
    torch.manual_seed(9)
    ref.unet = UNet2DConditionModel.from_config({**ref.unet.config, "in_channels": 9})
    ref.register_modules(unet=ref.unet)
    ref.save_pretrained(tmp_path / "xl9")
    pipe9 = latentgen.load(tmp_path / "xl9")
    image = photo(64, 5)
    for strength in (0.75, 1.0):
        ours = pipe9.inpaint("a red square", image, mask(64), strength=strength, seed=2, steps=4, guidance=5.0,
                             composite=False)
        theirs = ref("a red square", image=image, mask_image=mask(64), strength=strength, num_inference_steps=4,
                     guidance_scale=5.0, generator=_gens(2, 1), height=64, width=64).images
        assert max_diff(ours, theirs) <= 2


def test_an_sdxl_embedding_goes_into_both_encoders_as_diffusers_loads_it(xl_folder, tmp_path):
    """An A1111/kohya SDXL textual inversion (clip_l, clip_g) of 2 vectors: each part into its own encoder under
    the same word, the image diffusers draws with the same parts loaded by load_textual_inversion; SD 1.x files
    are refused by name."""
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(3)
    path = tmp_path / "shinyxl.safetensors"
    save_file({"clip_l": torch.randn(2, 32, generator=g), "clip_g": torch.randn(2, 64, generator=g)}, str(path))
    pipe = latentgen.load(xl_folder)
    assert pipe.load_embedding(path) == "shinyxl"
    ids = pipe.embeddings.loaded["shinyxl"].ids
    assert pipe.xl.tokenizer_2.convert_tokens_to_ids(["shinyxl", "shinyxl_1"]) == ids
    torch.testing.assert_close(pipe.xl.text_encoder_2.get_input_embeddings().weight[ids], load_file(str(path))["clip_g"])
    prompt = "a shinyxl circle"
    ours = pipe.generate(prompt, seed=2, steps=3, guidance=5.0)
    ref = diffusers_pipeline("StableDiffusionXLPipeline", xl_folder)
    parts = load_file(str(path))
    ref.load_textual_inversion(parts["clip_l"], token="shinyxl", text_encoder=ref.text_encoder, tokenizer=ref.tokenizer)
    ref.load_textual_inversion(parts["clip_g"], token="shinyxl", text_encoder=ref.text_encoder_2,
                               tokenizer=ref.tokenizer_2)
    theirs = ref(prompt, num_inference_steps=3, guidance_scale=5.0, generator=_gens(2, 1), height=64, width=64).images
    assert max_diff(ours, theirs) <= 2
    assert max_diff(ours, latentgen.load(xl_folder).generate("a circle", seed=2, steps=3, guidance=5.0)) > 2
    assert "TI hashes: \"shinyxl: " in ours[0].info["parameters"]
    save_file({"emb_params": torch.randn(1, 32, generator=g)}, str(tmp_path / "sd1.safetensors"))
    with pytest.raises(ValueError, match="is an SD 1.x/2.x embedding \\(32 wide\\), and this model is SDXL"):
        pipe.load_embedding(tmp_path / "sd1.safetensors")


def test_size_conditioning_is_settable_as_diffusers_micro_conditioning(xpipe, xref, pipe):
    """original, crop, target and the negative's own numbers reach the U-Net as diffusers' original_size,
    crops_coords_top_left, target_size and negative_* do; wrong values are refused by name."""
    sizes = latentgen.SizeCond(original=(48, 32), crop=(4, 8), target=(64, 64), negative=latentgen.SizeCond(
        original=(16, 16)))
    ours = xpipe.generate("a red circle", seed=5, steps=3, guidance=5.0, negative_prompt="dark", size_cond=sizes)
    theirs = xref("a red circle", negative_prompt="dark", num_inference_steps=3, guidance_scale=5.0,
                  generator=_gens(5, 1), height=64, width=64, original_size=(32, 48), crops_coords_top_left=(4, 8),
                  target_size=(64, 64), negative_original_size=(16, 16), negative_target_size=(64, 64)).images
    assert max_diff(ours, theirs) <= 2
    plain = xpipe.generate("a red circle", seed=5, steps=3, guidance=5.0, negative_prompt="dark")
    assert max_diff(ours, plain) > 2
    assert max_diff(plain, xpipe.generate("a red circle", seed=5, steps=3, guidance=5.0, negative_prompt="dark",
                                          size_cond=latentgen.SizeCond())) == 0  # the defaults: the drawing's size
    with pytest.raises(ValueError, match=r"size_cond.original=\(64,\) is invalid: use two whole numbers"):
        xpipe.generate("a cat", steps=1, size_cond=latentgen.SizeCond(original=(64,)))
    with pytest.raises(TypeError, match="size_cond must be a latentgen.SizeCond"):
        xpipe.generate("a cat", steps=1, size_cond=(64, 64))
    with pytest.raises(ValueError, match="size_cond.aesthetic is an SDXL refiner's number"):
        xpipe.generate("a cat", steps=1, size_cond=latentgen.SizeCond(aesthetic=6.0))
    with pytest.raises(ValueError, match="size_cond is SDXL's size conditioning; this model"):
        pipe.generate("a cat", steps=1, size_cond=sizes)


def test_a_refiners_aesthetic_scores_are_settable(xl_refiner_folder):
    rpipe = latentgen.load(xl_refiner_folder)
    ref = diffusers_pipeline("StableDiffusionXLImg2ImgPipeline", xl_refiner_folder)
    image = photo(64, 2)
    sizes = latentgen.SizeCond(aesthetic=7.5, negative=latentgen.SizeCond(aesthetic=1.0, original=(32, 32)))
    ours = rpipe.img2img("a cat", image, strength=0.5, seed=1, steps=6, guidance=5.0, size_cond=sizes)
    theirs = ref("a cat", image=image, strength=0.5, num_inference_steps=6, guidance_scale=5.0, generator=_gens(1, 1),
                 aesthetic_score=7.5, negative_aesthetic_score=1.0, negative_original_size=(32, 32),
                 negative_target_size=(64, 64)).images
    assert max_diff(ours, theirs) <= 2
    assert max_diff(ours, rpipe.img2img("a cat", image, strength=0.5, seed=1, steps=6, guidance=5.0)) > 2
