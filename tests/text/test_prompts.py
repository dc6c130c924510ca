"""latentgen.text.prompts: A1111's emphasis parsing, <lora:...> tags, 75-token chunks (commas, BREAK, padding
ids of SD 1 and SD 2 tokenizers), weighting, clip skip (= diffusers' clip_skip - 1), and the pipeline's
use of them: long prompts keep their tail, plain prompts stay bit-identical, metadata, LoRA tags."""

import pytest
import torch
from conftest import max_diff

from latentgen.text import prompts
from latentgen.text.prompts import BREAK, parse

B = BREAK


@pytest.mark.parametrize("text, expected", [
    # the examples in the docstring of A1111's parse_prompt_attention
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    # nesting, brackets, explicit weights
    ("((a))", [("a", 1.1 * 1.1)]),
    ("[a] b", [("a", 1 / 1.1), (" b", 1.0)]),
    ("[[a]]", [("a", 1 / 1.1 / 1.1)]),
    ("(a:1.3) b", [("a", 1.3), (" b", 1.0)]),
    ("(a:-0.5)", [("a", -0.5)]),
    ("((a:2))", [("a", 2 * 1.1)]),
    ("(a [b])", [("a ", 1.1), ("b", 1.1 / 1.1)]),
    ("a: b", [("a: b", 1.0)]),
    # spaces around an explicit weight, as A1111's pattern :\s*([+-]?[.\d]+)\s*\) allows
    ("(masterpiece: 1.2)", [("masterpiece", 1.2)]),
    ("(x:1.2 )", [("x", 1.2)]),
    ("(word : 1.5), cat", [("word ", 1.5), (", cat", 1.0)]),
    ("(a:\t-0.5\n) b", [("a", -0.5), (" b", 1.0)]),
    # escapes: \( \) \[ \] \\ are literal; a lone backslash is dropped
    (r"\(a\) \[b\] c\\d", [(r"(a) [b] c\d", 1.0)]),
    (r"(\(a\))", [("(a)", 1.1)]),
    (r"a\b", [("ab", 1.0)]),
    # unbalanced: closers with nothing open are text; unclosed openers reach the end
    ("a) b]", [("a) b]", 1.0)]),
    ("[a", [("a", 1 / 1.1)]),
    ("(a (b", [("a ", 1.1), ("b", 1.1 * 1.1)]),
    ("a:1.2) b", [("a:1.2) b", 1.0)]),
    ("(a:1.2", [("a:1.2", 1.1)]),
    ("(a:1.2.3)", [("a:1.2.3", 1.1)]),  # not a number: text (A1111 raises)
    # BREAK: its own marker, only the capital word
    ("a BREAK b", [("a", 1.0), B, ("b", 1.0)]),
    ("BREAK a", [("", 1.0), B, ("a", 1.0)]),
    ("a break b, aBREAKb", [("a break b, aBREAKb", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), B, ("b", 1.1)]),  # A1111 would give ("BREAK", -1.1): a word
    ("", [("", 1.0)]),
])
def test_parse_follows_a1111(text, expected):
    assert parse(text) == expected


def test_extra_networks_takes_lora_tags_out():
    text, tags = prompts.extra_networks("a cat <lora:purple:0.8>, <lora:other> dog <hypernet:h:2>")
    assert text == "a cat ,  dog "
    assert tags == [("lora", "purple", 0.8), ("lora", "other", 1.0), ("hypernet", "h", 2.0)]
    assert prompts.extra_networks("no tags (here:1.2)") == ("no tags (here:1.2)", [])


@pytest.mark.parametrize("text, weight", [
    ("<lora:p:0.5:1>", (0.5, 1.0)),  # A1111's <lora:NAME:TE:UNET>
    ("<lora:p:0.7:0.7>", 0.7),  # the same for both: one number
    ("<lora:p:te=0.3>", 0.3),  # UNET defaults to TE
    ("<lora:p:1:unet=0>", (1.0, 0.0)),
    ("<lora:p:0.2:0.4:te=0.6>", (0.6, 0.4)),  # a named weight over a positional one, as A1111
])
def test_a1111s_per_part_weights_are_read(text, weight):
    assert prompts.extra_networks(text) == ("", [("lora", "p", weight)])


@pytest.mark.parametrize("text, match", [
    ("<lora:p:high>", r"weight 'high', not a finite number: write it as <lora:p:0.8>"),
    ("<lora:p:1:0.5:8>", r"not supported: write <lora:NAME>, <lora:NAME:WEIGHT> or <lora:NAME:TE:UNET> "
                         r"\(te= and unet= work too; dyn= does not\)"),
    ("<lora:p:1:dyn=8>", r"not supported"),
    ("<lora:te=0.5>", r"not supported: write <lora:NAME>"),  # no name
    ("<lora:p:te=x>", r"weight 'x', not a finite number"),
])
def test_bad_tags_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        prompts.extra_networks(text)


# -- chunks -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok(pipe):
    return pipe.tokenizer


@pytest.fixture(scope="module")
def sd2_tok():
    """The same BPE with SD 2's padding token ("!", id 0), as diffusers' SD 2 tokenizer."""
    from transformers import CLIPTokenizer

    from latentgen.models.presets import data_dir

    return CLIPTokenizer.from_pretrained(data_dir("pipelines") / "tokenizers" / "clip-vit-large-patch14",
                                         pad_token="!")


def ids_of(chunks):
    return [c.ids.tolist() for c in chunks]


def test_chunk_boundaries_without_and_with_commas(tok):
    bos, eos, cat, dog, comma = 49406, 49407, 2368, 1929, 267
    assert tok(" cat dog ,", add_special_tokens=False).input_ids == [cat, dog, comma]
    one = prompts.tokenize(" ".join(["cat"] * 75), tok)
    assert ids_of(one) == [[bos] + [cat] * 75 + [eos]]
    two = prompts.tokenize(" ".join(["cat"] * 76), tok)
    assert ids_of(two) == [[bos] + [cat] * 75 + [eos], [bos, cat, eos] + [eos] * 74]
    # a comma 5 tokens before the end of a full chunk: what follows it moves to the next chunk
    moved = prompts.tokenize(" ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10), tok)
    assert ids_of(moved) == [[bos] + [cat] * 70 + [comma, eos] + [eos] * 4, [bos] + [dog] * 10 + [eos] * 66]
    # exactly 20 tokens back still moves; 21 does not
    at20 = prompts.tokenize(" ".join(["cat"] * 55) + ", " + " ".join(["dog"] * 30), tok)
    assert [c.ids.tolist().count(dog) for c in at20] == [0, 30]
    at21 = prompts.tokenize(" ".join(["cat"] * 54) + ", " + " ".join(["dog"] * 30), tok)
    assert [c.ids.tolist().count(dog) for c in at21] == [20, 10]


def test_break_starts_a_chunk_and_weights_follow_tokens(tok):
    chunks = prompts.tokenize("(cat:1.5) [dog] BREAK cat", tok)
    assert ids_of(chunks) == [[49406, 2368, 1929] + [49407] * 74, [49406, 2368] + [49407] * 75]
    w = chunks[0].weights
    assert w[1] == 1.5 and w[2] == pytest.approx(1 / 1.1) and bool((w[3:] == 1).all()) and w[0] == 1
    assert len(prompts.tokenize("cat BREAK", tok)) == 1 and len(prompts.tokenize("BREAK cat", tok)) == 2


@pytest.mark.parametrize("text", ["a red cat", "", "a (red:1.2) cat", " ".join(["cat"] * 80)])
def test_padding_ids_match_the_tokenizer_for_sd1_and_sd2(tok, sd2_tok, text):
    """One chunk: BOS, tokens, EOS, then the tokenizer's pad id (SD 1: EOS; SD 2: "!" = 0), as A1111
    pads each; under "plain" exactly what the tokenizer itself gives with max_length padding."""
    for t in (tok, sd2_tok):
        ref = t(text, padding="max_length", max_length=77, truncation=True).input_ids
        if len(t(text, add_special_tokens=False).input_ids) > 75:
            with pytest.warns(UserWarning, match="longer than 77 tokens and was cut"):
                plain = prompts.tokenize(text, t, syntax="plain")
        else:
            plain = prompts.tokenize(text, t, syntax="plain")
        assert ids_of(plain) == [ref]
        if "(" not in text:
            assert ids_of(prompts.tokenize(text, t))[0] == ref  # the first chunk is the truncated prompt
    short = prompts.tokenize("a cat", sd2_tok)[0].ids.tolist()
    assert short[:4] == [49406, 320, 2368, 49407] and set(short[4:]) == {0}


def test_multi_vector_words_stay_in_one_chunk(tok):
    expand = {2368: [2368, 49408, 49409]}  # "cat" as a 3-vector word
    assert ids_of(prompts.tokenize("a cat", tok, expand=expand))[0][:6] == [49406, 320, 2368, 49408, 49409, 49407]
    chunks = prompts.tokenize(" ".join(["a"] * 73) + " cat", tok, expand=expand)
    assert [c.ids.tolist().count(320) for c in chunks] == [73, 0]
    assert chunks[1].ids.tolist()[:5] == [49406, 2368, 49408, 49409, 49407]


# -- encoding -----------------------------------------------------------------------------------
def old_encoding(pipe, text):
    """latentgen's encode_prompt before prompt syntax (and diffusers'): truncate, pad, last layer."""
    tok = pipe.tokenizer
    ids = tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids)[0]


@pytest.mark.parametrize("text", ["a red cat", "", "a photo of an astronaut, riding a horse (on mars)"])
def test_plain_prompts_encode_bit_for_bit_as_before(pipe, text):
    with torch.no_grad():
        old = old_encoding(pipe, text)
    assert torch.equal(pipe.encode_prompt(text, syntax="plain"), old)
    if "(" not in text:
        assert torch.equal(pipe.encode_prompt(text), old)
    assert torch.equal(pipe.encode_prompt("a (red:1) cat"), pipe.encode_prompt("a red cat"))  # weight 1: no rescale


def test_long_prompt_keeps_its_tail(pipe):
    text = " ".join(["cat"] * 75) + " dog dog dog"
    with pytest.warns(UserWarning, match="was cut"):
        cut = pipe.encode_prompt(text, syntax="plain")
    full = pipe.encode_prompt(text)
    assert cut.shape == (1, 77, 32) and full.shape == (1, 154, 32)
    assert torch.equal(full[:, :77], cut)
    assert torch.equal(full[:, 77:], pipe.encode_prompt("dog dog dog"))  # the tail, encoded on its own


def test_weights_scale_tokens_and_keep_the_mean(pipe):
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    encoder = CLIPTextModel(pipe.text_encoder.config).eval()
    encoder.final_layer_norm.bias.data.fill_(0.3)  # a mean away from 0, as in trained CLIPs
    chunk = lambda text: prompts.tokenize(text, pipe.tokenizer)  # noqa: E731
    plain = prompts.encode(encoder, chunk("a cat dog"))
    weighted = prompts.encode(encoder, chunk("a (cat:1.5) [dog]"))
    w = torch.ones(77)
    w[2], w[3] = 1.5, 1 / 1.1
    expected = plain * w[None, :, None]
    expected = expected * (plain.mean() / expected.mean())
    assert torch.allclose(weighted, expected, atol=1e-6) and not torch.allclose(weighted, plain, atol=1e-2)
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-6)
    # the tiny model's final layer norm has no bias: a mean of ~0 is not divided by
    tiny = pipe.encode_prompt("a (cat:1.5) [dog]")
    assert torch.allclose(tiny, pipe.encode_prompt("a cat dog") * w[None, :, None], atol=1e-6)


def test_clip_skip_2_is_the_penultimate_layer_through_the_final_norm(pipe):
    """A1111's CLIP_stop_at_last_layers=2; diffusers' clip_skip=1 computes the same (its
    encode_prompt(clip_skip=...) itself fails on transformers 5, which has no ``text_model`` level)."""
    ids = pipe.tokenizer("a red cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
        expected = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm(hidden[-2])
    two = pipe.encode_prompt("a red cat", clip_skip=2)
    assert torch.equal(two, expected)
    assert not torch.allclose(two, pipe.encode_prompt("a red cat"))
    assert not torch.allclose(two, pipe.encode_prompt("a red cat", clip_skip=3))
    with pytest.raises(ValueError, match=r"clip_skip=6 is invalid: this text encoder has 5 layers; use 1"):
        pipe.encode_prompt("a red cat", clip_skip=6)


# -- in the pipeline ----------------------------------------------------------------------------


def test_weights_change_images(pipe):
    base = pipe.generate("a red cat", seed=3, steps=2)
    assert max_diff(base, pipe.generate("a (red:1.6) cat", seed=3, steps=2)) > 0




