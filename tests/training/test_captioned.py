"""latentgen.training.captioned: captioned image folders (.txt sidecars or a metadata.jsonl)."""

import json

from latentgen.training import captioned


def test_reads_sidecars_and_metadata_jsonl(tmp_path, data):
    pairs = captioned.read_dataset(data)
    assert len(pairs) == 6 and pairs[0][1].startswith("a purple ")
    (tmp_path / "img").mkdir()
    for p, cap in pairs[:2]:
        (tmp_path / "img" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "img" / "metadata.jsonl").write_text(
        "\n".join(json.dumps({"file_name": p.name, "text": cap}) for p, cap in pairs[:2]))
    assert captioned.read_dataset(tmp_path / "img") == [(tmp_path / "img" / p.name, c) for p, c in pairs[:2]]
