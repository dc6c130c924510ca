"""latentgen.text.embeddings: textual-inversion files in A1111's .pt and .safetensors layouts and diffusers'
learned_embeds, loaded as new words (n vectors each) that change the image; other prompts unchanged,
bit for bit; TI hashes in the PNG metadata; clear errors for bad files."""

import hashlib

import pytest
import torch
from conftest import max_diff
from safetensors.torch import save_file

from latentgen.text import embeddings, prompts

WIDTH = 32  # the tiny model's text-encoder width


def vectors(n, width=WIDTH, seed=0):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def a1111_pt(path, vec):
    """What A1111's Embedding.save writes (its vectors a leaf that required grad in training)."""
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec.clone().requires_grad_()},
                "name": path.stem, "step": 500, "sd_checkpoint": None, "sd_checkpoint_name": None}, path)
    return path


def a1111_safetensors(path, vec):
    save_file({"emb_params": vec.contiguous()}, str(path))
    return path


def diffusers_learned(path, vec, token="<cat-toy>"):
    save_file({token: vec[0].contiguous()}, str(path))  # one vector (D,), as diffusers' training script saves
    return path


LAYOUTS = {
    "a1111_pt": (lambda d: a1111_pt(d / "toy-pt.pt", vectors(2, seed=1)), "toy-pt", 2),
    "a1111_safetensors": (lambda d: a1111_safetensors(d / "toysafe.safetensors", vectors(3, seed=2)), "toysafe", 3),
    "diffusers": (lambda d: diffusers_learned(d / "learned_embeds.safetensors", vectors(1, seed=3)), "<cat-toy>", 1),
}


@pytest.fixture(scope="module")
def ti_pipe(tiny_folder):
    import latentgen

    return latentgen.load(tiny_folder)  # its own copy: the words added here stay out of other tests


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_adds_a_word_that_changes_the_image(ti_pipe, pipe, tmp_path, layout):
    write, token, n = LAYOUTS[layout]
    path = write(tmp_path)
    assert ti_pipe.load_embedding(path) == token  # A1111: the file's stem; diffusers: the file's own token
    ids = ti_pipe.embeddings.loaded[token].ids
    assert len(ids) == n and min(ids) >= 49408
    prompt = f"a {token}, cat"
    assert ids[0] in ti_pipe.tokenizer(prompt).input_ids
    chunk = prompts.tokenize(prompt, ti_pipe.tokenizer, expand=ti_pipe.embeddings.expansions())[0].ids.tolist()
    assert chunk[:n + 5] == [49406, 320, *ids, 267, 2368, 49407]  # the word is n tokens of the chunk
    rows = ti_pipe.text_encoder.get_input_embeddings().weight[ids]
    expected, _ = embeddings.read(path)
    assert torch.equal(rows, expected)
    ours = ti_pipe.generate(prompt, seed=5, steps=1)
    assert max_diff(ours, pipe.generate(prompt, seed=5, steps=1)) > 0  # pipe: the same model without the word
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "{token}: {sha}"' in ours[0].info["parameters"]


def test_words_leave_other_prompts_unchanged(ti_pipe, pipe, tmp_path):
    ti_pipe.load_embedding(a1111_pt(tmp_path / "other-word.pt", vectors(2, seed=9)))
    assert torch.equal(ti_pipe.encode_prompt("a red cat, (blue:1.2)"), pipe.encode_prompt("a red cat, (blue:1.2)"))
    ours = ti_pipe.generate("a red cat", seed=2, steps=1, negative_prompt="ugly")
    assert max_diff(ours, pipe.generate("a red cat", seed=2, steps=1, negative_prompt="ugly")) == 0
    assert "TI hashes" not in ours[0].info["parameters"]
    # a word inside another word is not the embedding (A1111 matches whole tokens too)
    assert ti_pipe.tokenizer("another-wordy").input_ids == pipe.tokenizer("another-wordy").input_ids


def test_hashes_name_words_of_prompt_and_negative(ti_pipe, tmp_path):
    a = ti_pipe.load_embedding(a1111_safetensors(tmp_path / "neg-a.safetensors", vectors(1, seed=4)))
    b = ti_pipe.load_embedding(a1111_safetensors(tmp_path / "pos-b.safetensors", vectors(1, seed=5)), token="posb")
    params = ti_pipe.generate(f"a {b} cat", negative_prompt=f"{a}", seed=1, steps=1)[0].info["parameters"]
    ha, hb = (ti_pipe.embeddings.loaded[t].hash for t in (a, b))
    assert f'TI hashes: "neg-a: {ha}, posb: {hb}"' in params


class Code:
    def __reduce__(self):
        return (print, ("this ran while loading",))


@pytest.mark.parametrize("make, error, match", [
    (lambda d: a1111_pt(d / "wide.pt", vectors(2, width=16)), ValueError,
     r"wide.pt has vectors of width 16, but this text encoder's width is 32"),
    (lambda d: torch.save({"string_to_param": {"*": vectors(1)}, "x": Code()}, d / "code.pt") or d / "code.pt",
     ValueError, r"code.pt is a pickle that needs code to load \(print\); .*weights_only=True"),
    (lambda d: d.joinpath("junk.pt").write_bytes(b"not a torch file") and d / "junk.pt", ValueError,
     r"junk.pt is neither a .safetensors file nor a torch checkpoint"),
    (lambda d: d / "missing.pt", FileNotFoundError, r"embedding file '.*missing.pt' does not exist"),
    (lambda d: save_file({"clip_l": vectors(1), "clip_g": vectors(1)}, str(d / "xl.safetensors"))
     or d / "xl.safetensors", ValueError, r"SDXL embedding"),
    (lambda d: torch.save({"string_to_param": {"*": vectors(1), "+": vectors(1)}}, d / "two.pt") or d / "two.pt",
     ValueError, r"string_to_param must hold exactly one tensor, found 2"),
    (lambda d: a1111_pt(d / "huge.pt", vectors(76)), ValueError, r"76 vectors; an embedding must fit in one chunk of 75"),
    (lambda d: save_file({"a": vectors(1), "b": vectors(1)}, str(d / "odd.safetensors")) or d / "odd.safetensors",
     ValueError, r"no known embedding layout \(keys: a, b\)"),
])
def test_bad_files_are_refused(ti_pipe, tmp_path, capsys, make, error, match):
    before = len(ti_pipe.tokenizer)
    with pytest.raises(error, match=match):
        ti_pipe.load_embedding(make(tmp_path))
    assert len(ti_pipe.tokenizer) == before and "this ran" not in capsys.readouterr().out


def test_a_taken_or_spaced_token_is_refused(ti_pipe, tmp_path):
    path = a1111_pt(tmp_path / "dup-word.pt", vectors(1))
    ti_pipe.load_embedding(path)
    with pytest.raises(ValueError, match=r"token 'DUP-WORD' is already loaded; pass another token="):
        ti_pipe.load_embedding(path, token="DUP-WORD")
    with pytest.raises(ValueError, match=r"token='two words' is invalid: use one word"):
        ti_pipe.load_embedding(path, token="two words")


def test_a_word_of_the_vocabulary_is_refused_and_keeps_its_vector(ti_pipe, tmp_path, monkeypatch):
    path = a1111_safetensors(tmp_path / "style.safetensors", vectors(2, seed=6))  # 'style': a BPE entry
    table = ti_pipe.text_encoder.get_input_embeddings().weight
    size, rows, before = len(ti_pipe.tokenizer), table.clone(), ti_pipe.encode_prompt("a stylesheet")
    for token in (None, "Style", "cat"):
        with pytest.raises(ValueError, match=rf"token '{token or 'style'}' is already in the tokenizer's "
                                             rf"vocabulary; pass another token=\.\.\. for style.safetensors"):
            ti_pipe.load_embedding(path, token=token)
    assert len(ti_pipe.tokenizer) == size and torch.equal(ti_pipe.text_encoder.get_input_embeddings().weight, rows)
    assert ti_pipe.load_embedding(path, token="<style>") == "<style>"  # another token= loads it
    assert torch.equal(ti_pipe.encode_prompt("a stylesheet"), before)
    # the extra words of a multi-vector embedding (token_1, ...) are checked too
    vocab = {**ti_pipe.tokenizer.get_vocab(), "<fresh>_1": 7}
    monkeypatch.setattr(ti_pipe.tokenizer, "get_vocab", lambda: vocab)
    with pytest.raises(ValueError, match=r"token '<fresh>_1' is already in the tokenizer's vocabulary"):
        ti_pipe.load_embedding(path, token="<fresh>")


def test_parse_spec_reads_path_and_token_and_checks_the_file(tmp_path):
    f = tmp_path / "style.pt"
    f.write_bytes(b"")
    assert embeddings.parse_spec(str(f)) == (str(f), None)
    assert embeddings.parse_spec(f"{f}:my-style") == (str(f), "my-style")
    with pytest.raises(FileNotFoundError, match=r"--embedding .*missing\.pt:tok: no such file"):
        embeddings.parse_spec(str(tmp_path / "missing.pt") + ":tok")
