"""Folders of captioned images, as LoRA training reads them (pairs, latents cached once, batches), and prior
images a model draws itself.

Layouts: one ``.txt`` caption beside each image (``cat.png`` + ``cat.txt``, kohya's layout) or a
``metadata.jsonl`` of ``{"file_name", "text"}`` lines (Hugging Face's imagefolder layout). kohya's DreamBooth
layout too: subfolders named ``N_tokens`` (``10_sks dog``), whose images count N times in a pass over the data
and, without a caption file, are captioned by the tokens (facts from sd-scripts' ``config_util`` and
``train_util``). Captions can be tag lists that each draw shuffles (kohya's ``shuffle_caption``, ``keep_tokens``,
``caption_tag_dropout_rate``: ``tag_caption``).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import files
from . import loop as train
from .configs import FolderRunOptions  # noqa: F401 - the trainers' shared options, named here too

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
REPEATS = re.compile(r"^(\d+)_(.*)$")  # kohya's DreamBooth folder: "10_sks dog" = 10 repeats, class tokens "sks dog"


def read_dataset(folder: Path, default_caption: str | None = None,
                 caption_extension: str = ".txt") -> list[tuple[Path, str]]:
    """(image path, caption) pairs of a data folder, sorted by file name; the images of a kohya repeat folder
    (``N_tokens``) N times each."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {str(folder)!r} does not exist; pass a folder of images with captions.")
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
        pairs = [(folder / r["file_name"], r.get("text")) for r in rows]
        missing = [p.name for p, _ in pairs if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"metadata.jsonl names {len(missing)} missing file(s): {', '.join(missing[:5])}.")
    else:
        pairs = _captioned(folder, caption_extension)
        repeats = sorted(d for d in folder.iterdir() if d.is_dir() and REPEATS.match(d.name))
        if pairs and repeats:
            raise ValueError(f"data folder {str(folder)!r} has images at its top and kohya repeat folders "
                             f"({repeats[0].name}, ...): move the top images into a folder such as 1_{folder.name}, "
                             f"or keep one layout.")
        for d in repeats:
            n, tokens = REPEATS.match(d.name).groups()
            pairs += _captioned(d, caption_extension, tokens.strip() or None) * int(n)
    if not pairs:
        raise ValueError(f"data folder {str(folder)!r} has no images ({', '.join(IMAGE_EXTS)}); add images "
                         f"with a {caption_extension} caption beside each, a metadata.jsonl, or kohya repeat folders "
                         f"such as 10_name/.")
    uncaptioned = sorted({p.name for p, c in pairs if not c})
    if uncaptioned and default_caption is None:
        raise ValueError(f"{len(uncaptioned)} image(s) have no caption ({', '.join(uncaptioned[:5])}): add a "
                         f"{caption_extension} beside each image or a metadata.jsonl, or pass default_caption=... "
                         f"(--default-caption).")
    return [(p, c or default_caption) for p, c in pairs]


def _captioned(folder: Path, extension: str, fallback: str | None = None) -> list[tuple[Path, str | None]]:
    """The images directly in ``folder``, sorted, each with its caption file's text (else ``fallback``)."""
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    return [(p, p.with_suffix(extension).read_text().strip() if p.with_suffix(extension).is_file() else fallback)
            for p in images]


def tag_caption(caption: str, shuffle: bool, keep: int, dropout: float, rng: random.Random) -> str:
    """A caption as kohya's dataset gives it to one draw: its comma-separated tags after the first ``keep``
    shuffled (``shuffle``) and each of those dropped with probability ``dropout``, joined by ", "; unchanged when
    neither is asked."""
    if not shuffle and not dropout:
        return caption
    tags = [t.strip() for t in caption.strip().split(",")]
    fixed, flex = tags[:keep], tags[keep:]
    if shuffle:
        rng.shuffle(flex)
    return ", ".join(fixed + [t for t in flex if not dropout or rng.random() >= dropout])


def prepare(path: Path, resolution: int, crop: str) -> torch.Tensor:
    """An image file -> (1, 3, res, res) in [-1, 1]: shorter side resized and center-cropped, or stretched."""
    from ..images import LANCZOS, load_rgb, to_tensor

    im = load_rgb(path, "image")[0]
    if crop == "center":
        s = resolution / min(im.size)
        im = im.resize((max(resolution, round(im.width * s)), max(resolution, round(im.height * s))), LANCZOS)
        left, top = (im.width - resolution) // 2, (im.height - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
    else:
        im = im.resize((resolution, resolution), LANCZOS)
    return to_tensor(im)


def draw_prior(pipe, folder: Path, prompts: list[str], n: int, seed: int = 0) -> int:
    """Fill ``folder`` up to ``n`` captioned images that ``pipe`` draws from ``prompts`` (cycled).

    Prior preservation (DreamBooth, Ruiz et al. 2022, https://arxiv.org/abs/2208.12242): training on
    the base model's own images of what it already knows, beside the new data, keeps those concepts
    from drifting toward the new one. Image i is ``prior-i.png`` from prompt i % len(prompts) and
    seed ``seed + i``; images already there are kept, so a folder is filled once and reused.
    Returns how many images were drawn.
    """
    if not prompts:
        raise ValueError("prior prompts are empty: give prompts of what the model should keep drawing, "
                         "such as 'a red circle on a blue background' (--prior-prompt, repeatable).")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(n) if not (folder / f"prior-{i:05d}.png").is_file()]
    for i in todo:
        cap = prompts[i % len(prompts)]
        image = pipe.generate(cap, seed=seed + i)[0]
        (folder / f"prior-{i:05d}.txt").write_text(cap + "\n")
        with files.atomic_path(folder / f"prior-{i:05d}.png") as tmp:  # the image last: it marks the pair complete
            image.save(tmp, format="PNG")
    return len(todo)


@torch.no_grad()
def cache_latents(vae, pairs: list[tuple[Path, str]], res: int, crop: str,
                  flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE runs once per image file (a repeated image once): each pair's latent distribution's mean and std
    (N, 4, h, w), scaled; ``flip``: of the prepared images mirrored left-right (kohya's flip_aug)."""
    files_ = list(dict.fromkeys(p for p, _ in pairs))
    dists = [vae.encode(prepare(p, res, crop).flip(3 if flip else ()).to(vae.device)).latent_dist for p in files_]
    at, sf = {p: i for i, p in enumerate(files_)}, vae.config.scaling_factor
    idx = [at[p] for p, _ in pairs]
    return torch.cat([d.mean for d in dists])[idx] * sf, torch.cat([d.std for d in dists])[idx] * sf


@dataclass
class Bucketed:
    """Latents cached at each image's aspect-ratio bucket (``latentgen.training.buckets``), per pair: the latent
    distribution's mean and std (1, 4, h, w) each, scaled; the bucket (w, h); the image's original (w, h); the
    crop's (top, left) in the resized picture."""
    mean: list
    std: list
    bucket: list
    original: list
    crop: list

    def counts(self) -> dict[tuple[int, int], int]:
        """{bucket (w, h): its pairs}, the buckets sorted."""
        return {b: self.bucket.count(b) for b in sorted(set(self.bucket))}

    def metadata(self) -> dict:
        """kohya's header keys of aspect-ratio buckets: on, and each bucket's size and image count."""
        info = {"buckets": {str(i): {"resolution": list(b), "count": n}
                            for i, (b, n) in enumerate(self.counts().items())}}
        return {"ss_enable_bucket": True, "ss_bucket_info": json.dumps(info)}

    def time_ids(self, idx: list[int]) -> torch.Tensor:
        """SDXL's size numbers of pairs ``idx`` (B, 6): original h, w, crop top, left, target (bucket) h, w."""
        return torch.tensor([[self.original[i][1], self.original[i][0], *self.crop[i], self.bucket[i][1],
                              self.bucket[i][0]] for i in idx], dtype=torch.float32)


@torch.no_grad()
def cache_bucketed(vae, pairs: list[tuple[Path, str]], resolutions: list[tuple[int, int]] | None,
                   flip: bool = False, no_upscale: tuple[int, int] | None = None) -> Bucketed:
    """Each image file encoded once, at the bucket of ``resolutions`` nearest its aspect ratio (``buckets.fit``), or
    with ``no_upscale`` (area, step) at its own size (``buckets.no_upscale``, kohya's --bucket_no_upscale);
    ``flip``: each mirrored left-right first (kohya's flip_aug), so its crop is the mirrored picture's."""
    from PIL import ImageOps

    from ..images import load_rgb, to_tensor
    from . import buckets

    seen, sf = {}, vae.config.scaling_factor
    for p in dict.fromkeys(p for p, _ in pairs):
        im = load_rgb(p, "image")[0]
        im = ImageOps.mirror(im) if flip else im
        bucket, resized = buckets.no_upscale(im.size, *no_upscale) if no_upscale else \
            (buckets.nearest(im.size, resolutions), None)
        if min(bucket) == 0:
            raise ValueError(f"{p.name} is {im.width}x{im.height}: a side under the bucket step {no_upscale[1]}, so "
                             f"bucket_no_upscale leaves no picture; enlarge it, or train without bucket_no_upscale.")
        fitted, crop = buckets.fit(im, bucket, resized=resized)
        d = vae.encode(to_tensor(fitted).to(vae.device)).latent_dist
        seen[p] = (d.mean * sf, d.std * sf, bucket, im.size, crop)
    rows = [seen[p] for p, _ in pairs]
    return Bucketed(*(list(column) for column in zip(*rows)))


class Batches:
    """``batch_fn(step, micro, accelerator)`` of the loop: epoch-wise shuffles of the data (and as many
    prior images after them), each process taking its own slice; a pure function of its coordinates. SDXL:
    ``tokenizer_2`` gives its second encoder's ids too.
    ``cfg``: a LoRA trainer's config (``batch``, ``grad_accum``, ``seed``, ``caption_dropout``, ``prior_weight``, and
    the tag options of ``texts``)."""

    def __init__(self, cfg, tokenizer, captions: list[str], n_data: int, n_prior: int,
                 mean: torch.Tensor, std: torch.Tensor, tokenizer_2=None, bucketed: Bucketed | None = None,
                 flipped: tuple | Bucketed | None = None):
        self.cfg, self.tokenizer, self.tokenizer_2, self.captions = cfg, tokenizer, tokenizer_2, captions
        self.n_data, self.n_prior, self.mean, self.std = n_data, n_prior, mean, std
        self.flipped = flipped  # with flip_aug: the mirrored images' (mean, std), or their Bucketed
        self.bucketed, self.order = bucketed, {}  # with buckets: each batch one bucket's (``buckets.epoch_batches``)
        # with buckets, the batches of one pass over the data (each bucket's last one may be smaller); else None
        self.per_epoch = None if bucketed is None else sum(-(-n // cfg.batch) for n in bucketed.counts().values())

    def data_picks(self, step: int, micro: int, a) -> list[int]:
        """The data indices of this micro-batch: ``picks``, or with buckets the next batch of one bucket."""
        if self.bucketed is None:
            return self.picks(self.n_data, 0, "epoch:", step, micro, a)
        from . import buckets

        epoch, k = divmod((step * self.cfg.grad_accum + micro) * a.num_processes + a.process_index, self.per_epoch)
        if epoch not in self.order:
            self.order = {epoch: buckets.epoch_batches(self.bucketed.bucket, self.cfg.batch, self.cfg.seed, epoch)}
        return self.order[epoch][k]

    def latents(self, idx: list[int], mirrored: list[bool] | None = None) -> dict:
        """The mean and std of pairs ``idx`` (of the mirrored images where ``mirrored`` says), and with buckets on
        SDXL their size numbers."""
        mirrored = mirrored or [False] * len(idx)
        if self.bucketed is None:
            mean, std = self.mean[idx], self.std[idx]  # (B, 4, h, w) copies
            for k, (i, m) in enumerate(zip(idx, mirrored)):
                if m:
                    mean[k], std[k] = self.flipped[0][i], self.flipped[1][i]
            return {"mean": mean, "std": std}
        b = [(self.flipped if m else self.bucketed, i) for i, m in zip(idx, mirrored)]
        out = {"mean": torch.cat([s.mean[i] for s, i in b]), "std": torch.cat([s.std[i] for s, i in b])}
        return {**out, "time_ids": torch.cat([s.time_ids([i]) for s, i in b])} if self.tokenizer_2 is not None else out

    def mirrored(self, n: int, step: int, micro: int, process: int) -> list[bool]:
        """Which of a draw's ``n`` images are mirrored: each with probability 1/2 with flip_aug (from (seed, step,
        micro, process)), none without."""
        if self.flipped is None:
            return [False] * n
        rng = random.Random(f"{self.cfg.seed}:flip:{step}:{micro}:{process}")
        return [rng.random() < 0.5 for _ in range(n)]

    def picks(self, n: int, offset: int, stream: str, step: int, micro: int, a) -> list[int]:
        cfg = self.cfg
        first = ((step * cfg.grad_accum + micro) * a.num_processes + a.process_index) * cfg.batch
        return [offset + random.Random(f"{cfg.seed}:{stream}{g // n}").sample(range(n), n)[g % n]
                for g in range(first, first + cfg.batch)]

    def __call__(self, step: int, micro: int, a) -> dict:
        cfg = self.cfg
        idx = self.data_picks(step, micro, a)
        weights = None
        if self.n_prior:  # loss = mean(data) + prior_weight * mean(prior)
            idx += self.picks(self.n_prior, self.n_data, "prior-epoch:", step, micro, a)
            weights = (torch.tensor([1.0] * cfg.batch + [cfg.prior_weight] * cfg.batch) / cfg.batch).to(a.device)
        caps = train.drop_captions(self.texts(idx, step, micro, a.process_index), cfg.caption_dropout, cfg.seed,
                                   step, micro, a.process_index)
        mirrored = self.mirrored(len(idx), step, micro, a.process_index)
        latents = {k: v.to(a.device) for k, v in self.latents(idx, mirrored).items()}
        return {**self.ids(caps, a.device), **latents, "weights": weights,
                "generator": train.step_generator(cfg.seed, step, micro, a.process_index)}

    def texts(self, idx: list[int], step: int, micro: int, process: int) -> list[str]:
        """The captions of ``idx`` as this draw reads them (``tag_caption`` with the config's ``shuffle_caption``,
        ``keep_tokens``, ``caption_tag_dropout``), the shuffles drawn from (seed, step, micro, process)."""
        cfg, rng = self.cfg, random.Random(f"{self.cfg.seed}:tags:{step}:{micro}:{process}")
        return [tag_caption(self.captions[i], cfg.shuffle_caption, cfg.keep_tokens, cfg.caption_tag_dropout, rng)
                for i in idx]

    def ids(self, captions: list[str], device) -> dict:
        """The captions' token ids (B, 77), and SDXL's bigG's through its own tokenizer (padding with "!")."""
        out = {"input_ids": train.tokenize(self.tokenizer, captions).to(device)}
        if self.tokenizer_2 is not None:
            out["input_ids_2"] = train.tokenize(self.tokenizer_2, captions).to(device)
        return out


def prior_pairs(cfg, c, acc) -> list[tuple[Path, str]]:
    """The prior images (none without ``prior_data``), drawn first by the base model from
    ``prior_prompts`` when given, on the main process, before any adapter exists."""
    if cfg.prior_data is None:
        return []
    if cfg.prior_prompts and acc.is_main_process:
        from ..pipeline import Pipeline

        draw_prior(Pipeline.from_components(c), cfg.prior_data, cfg.prior_prompts, cfg.prior_images, cfg.seed)
    acc.wait_for_everyone()
    return read_dataset(cfg.prior_data, caption_extension=cfg.caption_extension)

