import gzip
import importlib.util
import json
from pathlib import Path

from transformers import CLIPTokenizer

from latentgen.models.presets import load_preset

# the builder lives beside the data it builds (pipelines/), outside the package: loaded from the checkout
_SCRIPT = Path(__file__).resolve().parents[2] / "pipelines" / "build_tokenizer.py"
_spec = importlib.util.spec_from_file_location("build_tokenizer", _SCRIPT)
build_tokenizer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_tokenizer)


def tokenizer():
    return CLIPTokenizer.from_pretrained(load_preset("sd15").tokenizer_dir)


def test_ids_match_openai_clip_vit_large_patch14():
    ids = tokenizer()("a dog wearing hat", padding="max_length", max_length=77, truncation=True).input_ids
    assert ids[:6] == [49406, 320, 1929, 3309, 3801, 49407]
    assert ids[6:] == [49407] * 71 and len(ids) == 77


def test_more_known_ids_and_vocab_size():
    tok = tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    # "a photo of an astronaut riding a horse on mars" as the CLIP-L tokenizer of SD 1.x gives it
    assert tok("A photo of an astronaut riding a horse on Mars").input_ids == [
        49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]


def test_long_prompts_are_truncated_to_77():
    ids = tokenizer()("cat " * 100, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407


def test_build_orders_vocab_as_clip_does(tmp_path):
    merges = ["i n", "t h", "a n</w>"]
    bpe = gzip.compress(("#version: 0.2\n" + "\n".join(merges) + "\n").encode())
    vocab, kept = build_tokenizer.build(bpe)
    assert kept == merges
    assert vocab["!"] == 0 and vocab["!</w>"] == 256  # bytes, then bytes + </w>
    assert vocab["in"] == 512 and vocab["th"] == 513 and vocab["an</w>"] == 514
    assert vocab["<|startoftext|>"] == 515 and vocab["<|endoftext|>"] == 516


def test_shipped_files_agree_with_the_build_rule():
    folder = load_preset("sd15").tokenizer_dir
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = (folder / "merges.txt").read_text().splitlines()
    assert merges[0].startswith("#version") and len(merges) - 1 == 49152 - 256 - 2
    assert vocab[merges[1].replace(" ", "")] == 512 and vocab["<|endoftext|>"] == 49407
