"""latentgen.text.conditioning: the text side of a call. Each image's cond and uncond are padded to its own
number of chunks (never a batch mate's); the PNG names clip skip and the syntax when not default; bad text
settings and bad <lora:...> tags fail before any model work; a tag's LoRA equals load_lora's."""

import pytest
import torch
from conftest import max_diff


@pytest.fixture
def captured(pipe, monkeypatch):
    """The (cond, uncond) each U-Net loop gets; no sampling."""
    seen = []

    def denoise(start, text, *a, **k):
        seen.append((text.cond, text.uncond))
        return start.latents
    monkeypatch.setattr(pipe, "denoise", denoise)
    return seen


def test_cond_and_uncond_are_padded_with_empty_chunks(pipe, captured):
    long = " ".join(["cat"] * 80)
    pipe.generate(long, negative_prompt="ugly", steps=1)
    cond, uncond = captured[-1]
    assert cond.shape == uncond.shape == (1, 154, 32)
    assert torch.equal(uncond[:, :77], pipe.encode_prompt("ugly"))
    assert torch.equal(uncond[:, 77:], pipe.encode_prompt(""))
    # a batch is split where k changes: an image is padded to its own k only, never to a batch mate's
    one_by_one, split = [(1, 77), (1, 154), (1, 77), (1, 77)], [(1, 77), (1, 154), (2, 77)]
    for batch_size, calls in [(1, one_by_one), (2, split), (3, split)]:
        del captured[:]
        pipe.generate(["a cat", long, "a dog", "a bird"], steps=1, batch_size=batch_size)
        assert [tuple(c.shape[:2]) for c, _ in captured] == calls and all(u.shape == c.shape for c, u in captured)
    pipe.generate(["a cat", "a dog"], negative_prompt=["ugly", long], steps=1, batch_size=2)
    assert [(c.shape[1], u.shape[1]) for c, u in captured[-2:]] == [(77, 77), (154, 154)]
    assert torch.equal(captured[-1][0][:, 77:], pipe.encode_prompt(""))  # the cond padded to its negative's k


def test_metadata_names_clip_skip_and_syntax_only_when_not_default(pipe, captured):
    one = pipe.generate("a cat", steps=1)[0].info["parameters"]
    two = pipe.generate("a cat", steps=1, clip_skip=2, prompt_syntax="plain")[0].info["parameters"]
    assert "Clip skip" not in one and "Prompt syntax" not in one
    assert f"Model: {pipe.name}, Clip skip: 2, Prompt syntax: plain" in two
    assert not torch.equal(captured[0][0], captured[1][0])


@pytest.mark.parametrize("kwargs, match", [
    ({"clip_skip": 0}, r"clip_skip=0 is invalid: use 1"),
    ({"clip_skip": 1.5}, r"clip_skip=1.5 is invalid"),
    ({"clip_skip": True}, r"clip_skip=True is invalid"),
    ({"prompt_syntax": "compel"}, r"prompt_syntax='compel' is invalid: use 'a1111'"),
])
def test_bad_text_settings_fail_before_model_work(pipe, captured, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe.generate("a cat", steps=1, **kwargs)
    assert captured == []


@pytest.mark.parametrize("prompt, negative, error, match", [
    (["a <lora:purple:1>", "b <lora:purple:0.5>"], None, ValueError, "different LoRA tags"),
    ("a cat", "ugly <lora:purple:1>", ValueError, "tags work in the prompt only"),
    ("a <hypernet:x:1>", None, ValueError, "only LoRA tags work"),
    ("a <lora:nowhere:1>", None, FileNotFoundError, r"<lora:nowhere>: no LoRA of that name is loaded"),
])
def test_bad_lora_tags_are_refused(pipe, captured, prompt, negative, error, match):
    with pytest.raises(error, match=match):
        pipe.generate(prompt, negative_prompt=negative, steps=1)
    assert captured == [] and pipe.loras.loaded == {}


def test_plain_syntax_keeps_tags_as_text(pipe, captured):
    pipe.generate("a <lora:nowhere:1>", steps=1, prompt_syntax="plain", guidance=1)
    assert torch.equal(captured[-1][0], pipe.encode_prompt("a <lora:nowhere:1>", syntax="plain"))


@pytest.mark.slow
def test_lora_tag_equals_load_lora_on_the_default_model():
    import latentgen

    pipe = latentgen.load()
    text = "a purple circle on a white background"
    base = pipe.generate(text, seed=1, steps=2)
    tagged = pipe.generate(f"{text} <lora:purple:1>", seed=1, steps=2)
    half = pipe.generate(f"<lora:purple:0.5>{text}", seed=1, steps=2)
    assert pipe.loras.loaded == {}  # unloaded after each call
    params = tagged[0].info["parameters"]
    assert params.startswith(f"{text} <lora:purple:1>\n") and 'Lora hashes: "purple: ' in params
    pipe.load_lora("purple")
    assert max_diff(tagged, pipe.generate(text, seed=1, steps=2)) == 0 and max_diff(tagged, base) > 20
    # a loaded LoRA named by a tag takes the tag's weight for the call, then its own scale back
    assert max_diff(half, pipe.generate(f"{text} <lora:purple:0.5>", seed=1, steps=2)) == 0
    assert pipe.loras.loaded["purple"].scale == 1.0 and max_diff(half, tagged) > 0
