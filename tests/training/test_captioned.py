"""latentgen.training.captioned: captioned image folders (.txt sidecars or a metadata.jsonl)."""

import json
import random

import pytest
import torch

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


def _image(path, color=(255, 0, 0)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def test_kohya_repeat_folders_count_n_times_and_caption_by_their_tokens(tmp_path):
    a = _image(tmp_path / "d" / "10_sks dog" / "a.png")
    b = _image(tmp_path / "d" / "10_sks dog" / "b.png")
    b.with_suffix(".caption").write_text("sks dog, on grass\n")
    c = _image(tmp_path / "d" / "2_style" / "c.png")
    _image(tmp_path / "d" / "notes" / "x.png")  # no N_: not data, as kohya skips it
    _image(tmp_path / "d" / "0_off" / "y.png")  # 0 repeats: none
    pairs = captioned.read_dataset(tmp_path / "d", caption_extension=".caption")
    assert pairs == [(a, "sks dog"), (b, "sks dog, on grass")] * 10 + [(c, "style")] * 2
    assert captioned.read_dataset(tmp_path / "d")[11] == (b, "sks dog")  # no .txt beside b: the folder's tokens
    _image(tmp_path / "d" / "top.png")
    with pytest.raises(ValueError, match=r"has images at its top and kohya repeat folders \(0_off, ...\): move the top images "
                                         r"into a folder such as 1_d"):
        captioned.read_dataset(tmp_path / "d")
    _image(tmp_path / "e" / "3_" / "z.png")
    with pytest.raises(ValueError, match=r"1 image\(s\) have no caption \(z.png\)"):
        captioned.read_dataset(tmp_path / "e")
    assert captioned.read_dataset(tmp_path / "e", default_caption="x") == [(tmp_path / "e" / "3_" / "z.png", "x")] * 3
    (tmp_path / "f").mkdir()
    with pytest.raises(ValueError, match="no images .*kohya repeat folders such as 10_name"):
        captioned.read_dataset(tmp_path / "f")


def test_a_repeated_image_is_encoded_once(tmp_path):
    class Vae:  # counts encodes; its latents are the image's mean color
        config, device, calls = type("C", (), {"scaling_factor": 2.0})(), "cpu", []

        def encode(self, x):
            self.calls.append(x)
            mean = x.mean().reshape(1, 1, 1, 1).expand(1, 4, 1, 1)
            return type("E", (), {"latent_dist": type("D", (), {"mean": mean, "std": mean * 0 + 1})()})()

    red, blue = _image(tmp_path / "r.png"), _image(tmp_path / "b.png", (255, 255, 255))
    vae = Vae()
    mean, std = captioned.cache_latents(vae, [(red, "x"), (blue, "y"), (red, "x"), (red, "z")], 8, "center")
    assert len(vae.calls) == 2 and mean.shape == (4, 4, 1, 1) and torch.equal(std, torch.full((4, 4, 1, 1), 2.0))
    assert torch.equal(mean[0], mean[2]) and torch.equal(mean[0], mean[3]) and not torch.equal(mean[0], mean[1])


def test_tag_captions_shuffle_after_the_kept_tags_and_drop_some():
    caption = "sks dog, red collar, grass, sunny, photo"
    assert captioned.tag_caption(caption, False, 1, 0.0, random.Random(0)) == caption  # nothing asked
    seen = {captioned.tag_caption(caption, True, 1, 0.0, random.Random(i)) for i in range(50)}
    assert len(seen) > 10 and all(s.startswith("sks dog, ") for s in seen)
    assert all(sorted(s.split(", ")) == sorted(caption.split(", ")) for s in seen)
    kept = [captioned.tag_caption(caption, False, 2, 0.5, random.Random(i)) for i in range(200)]
    assert all(k.startswith("sks dog, red collar") for k in kept)
    dropped = sum(5 - len(k.split(", ")) for k in kept) / (3 * 200)  # of the 3 tags after the kept 2
    assert 0.4 < dropped < 0.6
    cfg = type("Cfg", (), dict(seed=1, shuffle_caption=True, keep_tokens=1, caption_tag_dropout=0.0))()
    batches = captioned.Batches(cfg, None, [caption] * 4, 4, 0, None, None)
    assert batches.texts([0, 1], 3, 0, 0) == batches.texts([0, 1], 3, 0, 0)  # a function of its coordinates
    assert batches.texts([0, 1], 3, 0, 0) != batches.texts([0, 1], 4, 0, 0)


class RowVae:
    """A stand-in VAE whose latent mean is the image's top row (1, 3, 1, W), so a mirrored image's is mirrored."""
    config, device = type("C", (), {"scaling_factor": 1.0})(), "cpu"

    def encode(self, x):
        mean = x[:, :, :1, :]
        return type("E", (), {"latent_dist": type("D", (), {"mean": mean, "std": mean * 0 + 1})()})()


def _halves(path, size=(8, 8)):
    """A picture red on its left half, blue on its right."""
    from PIL import Image

    im = Image.new("RGB", size, (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    im.save(path)
    return path


def test_flip_aug_caches_each_image_mirrored_and_draws_it_half_the_time(tmp_path):
    pairs = [(_halves(tmp_path / "a.png"), "a"), (_image(tmp_path / "b.png", (0, 255, 0)), "b")]
    mean, std = captioned.cache_latents(RowVae(), pairs, 8, "center")
    fm, fs = captioned.cache_latents(RowVae(), pairs, 8, "center", flip=True)
    assert torch.equal(fm, mean.flip(3)) and not torch.equal(fm[0], mean[0])  # the red half now on the right
    cfg = type("Cfg", (), dict(seed=3))()
    batches = captioned.Batches(cfg, None, ["a", "b"], 2, 0, mean, std, flipped=(fm, fs))
    draws = [batches.mirrored(2, step, 0, 0) for step in range(400)]
    assert 0.4 < sum(map(sum, draws)) / 800 < 0.6 and draws[7] == batches.mirrored(2, 7, 0, 0)  # seeded
    got = batches.latents([0, 0, 1], [True, False, True])
    assert torch.equal(got["mean"][0], fm[0]) and torch.equal(got["mean"][1], mean[0])
    assert torch.equal(got["mean"][2], fm[1]) and torch.equal(batches.mean, torch.stack([mean[0], mean[1]]))
    plain = captioned.Batches(cfg, None, ["a", "b"], 2, 0, mean, std)
    assert plain.mirrored(5, 1, 0, 0) == [False] * 5  # without flip_aug, never


def test_flip_aug_with_buckets_mirrors_the_picture_before_its_crop(tmp_path):
    from PIL import Image, ImageOps

    from latentgen.images import to_tensor
    from latentgen.training import buckets

    wide = _halves(tmp_path / "w.png", (21, 8))  # resized to cover (16, 8): 21 x 8 -> 21 wide, cropped 2 + 3
    pairs, sizes = [(wide, "w")], [(16, 8), (8, 8)]
    plain = captioned.cache_bucketed(RowVae(), pairs, sizes)
    mirrored = captioned.cache_bucketed(RowVae(), pairs, sizes, flip=True)
    fitted, crop = buckets.fit(ImageOps.mirror(Image.open(wide).convert("RGB")), (16, 8))
    assert mirrored.bucket == plain.bucket == [(16, 8)] and mirrored.crop == [crop] == [(0, 2)]
    assert torch.equal(mirrored.mean[0], to_tensor(fitted)[:, :, :1, :])  # the mirrored picture, cropped
    assert not torch.equal(mirrored.mean[0], plain.mean[0])
    cfg = type("Cfg", (), dict(seed=0, batch=1))()
    batches = captioned.Batches(cfg, object(), ["w"], 1, 0, None, None, tokenizer_2=object(), bucketed=plain,
                                flipped=mirrored)
    got = batches.latents([0, 0], [False, True])
    assert torch.equal(got["mean"][1], mirrored.mean[0][0]) and torch.equal(got["mean"][0], plain.mean[0][0])
    assert torch.equal(got["time_ids"][1], mirrored.time_ids([0])[0])  # the mirrored picture's own crop
