"""Build the CLIP BPE tokenizer files (vocab.json, merges.txt) that ship in pipelines/tokenizers/.

No model hub is reachable where latentgen is built, so the SD 1.x tokenizer
(openai/clip-vit-large-patch14) is rebuilt from the BPE merge list that OpenAI's CLIP
code published and that the open_clip_torch wheel carries as
``open_clip/bpe_simple_vocab_16e6.txt.gz``. The vocabulary order follows CLIP's
``SimpleTokenizer``: 256 byte symbols, the same with ``</w>``, one entry per merge,
then ``<|startoftext|>`` and ``<|endoftext|>`` (49,408 ids in all).

It lives beside the data it builds, outside the package. Run it once by hand from the repository
root (the wheel is no dependency of latentgen)::

    pip download --no-deps open_clip_torch -d /tmp/oc
    python pipelines/build_tokenizer.py /tmp/oc/open_clip_torch-*.whl pipelines/tokenizers/clip-vit-large-patch14
"""

from __future__ import annotations

import argparse
import gzip
import json
import zipfile
from pathlib import Path

from transformers.convert_slow_tokenizer import bytes_to_unicode

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges: 49,408 ids with specials.
SPECIAL = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
}


def build(bpe_gz: bytes) -> tuple[dict[str, int], list[str]]:
    """Return (vocab, merges) from the gzipped BPE merge list."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = [m for m in lines[1 : NUM_MERGES + 1] if m]  # line 0 is a "#version" header
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m.split()) for m in merges]
    vocab += [SPECIAL["bos_token"], SPECIAL["eos_token"]]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        vocab, merges = build(zf.read(BPE_MEMBER))
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {"model_max_length": 77, "do_lower_case": True, "errors": "replace",
              "tokenizer_class": "CLIPTokenizer", **SPECIAL}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(SPECIAL, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wheel", type=Path, help="open_clip_torch wheel holding the BPE merge list")
    ap.add_argument("out", type=Path, help="folder to write the tokenizer files into")
    args = ap.parse_args()
    write(args.wheel, args.out)


if __name__ == "__main__":
    main()
