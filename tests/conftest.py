"""Shared fixtures and helpers: a tiny random SD-shaped model saved as a diffusers folder (diffusers'
dummy-component pattern), latentgen's pipeline on it, diffusers' reference pipeline on the same folder,
random LoRA files on it, a small captioned data folder, and image helpers used by several modules.

The helpers are imported by the test modules (``from conftest import max_diff``): with pytest's default
import mode this folder is on ``sys.path`` once this file is loaded."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite checks latentgen's arithmetic against diffusers' on torch; the OpenVINO backend (the CPU default)
# has its own tests (test_runtime.py, and the shipped model's adherence in embedded/test_ship.py ask for it).
os.environ.setdefault("LATENTGEN_BACKEND", "torch")
if "LATENTGEN_CACHE" not in os.environ:  # converted U-Nets, gone with the session
    os.environ["LATENTGEN_CACHE"] = tempfile.mkdtemp(prefix="latentgen-cache-")
    atexit.register(shutil.rmtree, os.environ["LATENTGEN_CACHE"], True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def vocab_tokenizer(folder) -> None:
    """``folder``'s tokenizer as SD 1.x folders hold it (vocab.json and merges.txt, as in stable-diffusion-v1-5),
    not the tokenizer.json transformers writes: the same tokens, read four times faster (0.06 s against 0.23 s), and
    the suite loads these folders hundreds of times. The embedded model keeps tokenizer.json, so both are loaded."""
    from latentgen.models.presets import data_dir

    target = folder / "tokenizer"
    shutil.rmtree(target)
    shutil.copytree(data_dir("pipelines") / "tokenizers" / "clip-vit-large-patch14", target)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    from latentgen.models import loading

    c = loading.load_components("tiny-random")  # seeded random weights
    folder = tmp_path_factory.mktemp("tiny-sd")
    StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                            scheduler=c.scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    vocab_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def xl_folder(tmp_path_factory):
    """The tiny random SDXL-shaped model (``pipelines/tiny-random-xl.json``: text encoders 32 and 64 wide), saved by diffusers'
    ``StableDiffusionXLPipeline``: two text encoders, a pooled embedding, six size numbers."""
    from diffusers import StableDiffusionXLPipeline

    from latentgen.models import loading

    c = loading.load_components("tiny-random-xl")
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    StableDiffusionXLPipeline(vae=c.vae, text_encoder=c.text_encoder, text_encoder_2=c.xl.text_encoder_2,
                              tokenizer=c.tokenizer, tokenizer_2=c.xl.tokenizer_2, unet=c.unet,
                              scheduler=c.scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def xl_refiner_folder(tmp_path_factory):
    """A tiny random SDXL refiner for the tiny SDXL model, saved by diffusers' ``StableDiffusionXLImg2ImgPipeline``:
    bigG alone (the base's text_encoder_2, 64 wide), a U-Net of five size numbers (the aesthetic score), the same VAE."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    from latentgen.models import loading

    c = loading.load_components("tiny-random-xl")
    te2 = c.xl.text_encoder_2
    config = {**c.unet.config, "cross_attention_dim": te2.config.hidden_size,
              "projection_class_embeddings_input_dim": c.unet.config.addition_time_embed_dim * 5 + te2.config.projection_dim}
    torch.manual_seed(11)
    unet = UNet2DConditionModel.from_config(config).eval()
    folder = tmp_path_factory.mktemp("tiny-sdxl-refiner")
    StableDiffusionXLImg2ImgPipeline(vae=c.vae, text_encoder=None, text_encoder_2=te2, tokenizer=None,
                                     tokenizer_2=c.xl.tokenizer_2, unet=unet, scheduler=c.scheduler,
                                     requires_aesthetics_score=True,
                                     force_zeros_for_empty_prompt=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def pipe(tiny_folder):
    import latentgen

    return latentgen.load(tiny_folder)


@pytest.fixture(scope="session")
def tiny_other(tiny_folder, tmp_path_factory):
    """Another checkpoint of the tiny model's family: every weight of its U-Net, text encoder and VAE moved."""
    import diffusers

    ref = diffusers.StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for net in (ref.unet, ref.text_encoder, ref.vae):
            for p in net.parameters():
                p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g))
    folder = tmp_path_factory.mktemp("tiny-other")
    ref.save_pretrained(folder)
    vocab_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def vae_file(tiny_folder, tmp_path_factory):
    """A VAE file (A1111's "SD VAE", LDM names) for the tiny model: its VAE with every weight times 1.1."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from latentgen.models import ldm

    vae = AutoencoderKL.from_pretrained(tiny_folder / "vae")
    moved = {k: v * 1.1 for k, v in vae.state_dict().items()}
    file = tmp_path_factory.mktemp("vae") / "my-vae.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.vae_to_ldm(moved, vae.config, prefix="").items()}, str(file))
    return file


@pytest.fixture(scope="session")
def folder9(tiny_folder, tmp_path_factory):
    """The tiny model with a 9-channel (inpainting) U-Net: latents + mask + masked-image latents."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    ref = StableDiffusionInpaintPipeline.from_pretrained(tiny_folder, safety_checker=None)
    torch.manual_seed(9)
    ref.unet = UNet2DConditionModel.from_config({**ref.unet.config, "in_channels": 9})
    ref.register_modules(unet=ref.unet)
    folder = tmp_path_factory.mktemp("tiny-sd-inpaint")
    ref.save_pretrained(folder)
    vocab_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def controlnets(tiny_folder, tmp_path_factory):
    """Two tiny ControlNets for the tiny U-Net (diffusers folders): ``ControlNetModel.from_unet`` with their zero
    convolutions (and hint encoder's last layer) randomized, so their residuals are not 0."""
    import json

    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_folder, subfolder="unet")
    vae = json.loads((tiny_folder / "vae" / "config.json").read_text())
    levels = (2 ** (len(vae["block_out_channels"]) - 1)).bit_length()  # the hint encoder downsamples as the VAE
    folders = []
    for seed in (0, 1):
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16,) * levels)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in [*net.controlnet_down_blocks, net.controlnet_mid_block,
                           net.controlnet_cond_embedding.conv_out]:
                for p in module.parameters():
                    p.normal_(0, 0.3, generator=g)
        folder = tmp_path_factory.mktemp(f"controlnet-{seed}")
        net.save_pretrained(folder)
        folders.append(folder)
    return folders


@pytest.fixture(scope="session")
def xl_controlnet(xl_folder, tmp_path_factory):
    """A tiny SDXL ControlNet (``from_unet`` of the tiny SDXL U-Net: its added embedding too), zero convolutions
    randomized."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    net = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(xl_folder, subfolder="unet"),
                                    conditioning_embedding_out_channels=(16, 16))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
            for p in module.parameters():
                p.normal_(0, 0.3, generator=g)
    folder = tmp_path_factory.mktemp("xl-controlnet")
    net.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def upscaler_folder(tmp_path_factory):
    """A folder of two tiny random upscaler model files, as A1111's models/ESRGAN: ``4x-tiny.pth`` (an RRDBNet,
    BasicSR's names, a weights-only pickle) and ``2x-compact.safetensors`` (a Real-ESRGAN Compact)."""
    from safetensors.torch import save_file

    from latentgen.upscale import esrgan

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("upscalers")
    torch.save(esrgan.RRDBNet(3, 3, nf=8, gc=8, blocks=1, ups=2).state_dict(), folder / "4x-tiny.pth")
    compact = esrgan.Compact(3, nf=8, convs=2, scale=2).state_dict()
    save_file({k: v.contiguous() for k, v in compact.items()}, str(folder / "2x-compact.safetensors"))
    return folder


def diffusers_pipeline(cls_name: str, folder):
    """diffusers' reference pipeline ``cls_name`` (e.g. "StableDiffusionImg2ImgPipeline") on a folder, quiet."""
    import diffusers

    ref = getattr(diffusers, cls_name).from_pretrained(folder, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    return ref


@pytest.fixture(scope="session")
def reference(tiny_folder):
    return diffusers_pipeline("StableDiffusionPipeline", tiny_folder)


def max_diff(a_images, b_images):
    """The largest pixel difference between two equally long lists of images."""
    assert len(a_images) == len(b_images)
    return max(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() for a, b in zip(a_images, b_images))


def reference_images(reference, pipe, name, prompt, seed, n, negative, guidance=6.0, steps=4):
    """diffusers' images with latentgen's sampler ``name`` and per-image seeds seed, seed+1, ..."""
    from latentgen import schedulers

    reference.scheduler = schedulers.make(name, pipe.scheduler.config)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    return reference(prompt, num_inference_steps=steps, guidance_scale=guidance, negative_prompt=negative,
                     num_images_per_prompt=n, generator=gens[0] if n == 1 else gens,
                     height=64, width=64).images


# --- images for img2img / inpainting inputs (tests/test_images.py, tests/cli/test_main.py)

def photo(size=64, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)


def mask(size=64):
    m = np.zeros((size, size), np.uint8)
    m[16:40, 20:44] = 255
    return Image.fromarray(m)


def huge_png(width: int, height: int, text: str | None = None) -> bytes:
    """A valid 1-bit PNG that claims width x height: tens of KB on disk, width * height pixels when decoded (a
    decompression bomb when huge); ``text``: a ``parameters`` chunk before the pixels."""
    import struct
    import zlib

    row = b"\x00" + bytes((width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(min(height, 20000))) + comp.flush()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    info = chunk(b"tEXt", b"parameters\x00" + text.encode()) if text else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + info
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# --- LoRAs (tests/test_lora.py, tests/test_adapters.py, tests/cli/test_main.py)

def random_lora(pipe, seed=0, rank=4, alpha=2.0, text=True, magnitude=0.3):
    """A random LoRA on the U-Net's attention projections (and the text encoder's)."""
    from latentgen.lora import formats as lora_io
    from latentgen.lora import names as lora_names

    g = torch.Generator().manual_seed(seed)
    out = lora_io.Lora(metadata={"ss_output_name": "random"})
    parts = [("unet", pipe.unet, lora_names.UNET_TARGETS)] + \
        ([("text_encoder", pipe.text_encoder, lora_names.TEXT_TARGETS)] if text else [])
    for part, model, targets in parts:
        for name, mod in lora_names.module_names(model, part).items():
            if name.endswith(tuple("." + t for t in targets)):
                w = mod.weight
                out.modules.setdefault(part, {})[name] = (
                    torch.randn(rank, w.shape[1], generator=g) * magnitude,
                    torch.randn(w.shape[0], rank, generator=g) * magnitude, alpha)
    return out


@pytest.fixture
def fresh(tiny_folder):
    import latentgen

    return latentgen.load(tiny_folder)


@pytest.fixture
def lora_files(tiny_folder, tmp_path):
    import latentgen
    from latentgen.lora import formats as lora_io

    lora = random_lora(latentgen.load(tiny_folder))
    return (lora_io.save(lora, tmp_path / "a.safetensors", "diffusers"),
            lora_io.save(lora, tmp_path / "a_kohya.safetensors", "kohya"), lora)


# --- a captioned data folder (tests/test_captioned.py, tests/test_finetune.py)

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from latentgen.embedded import shapes

    folder = tmp_path_factory.mktemp("purple")
    shapes.write_folder(folder, 6, seed=1, colors=("purple",))
    return folder


# --- a kill mid-training (tests/training: exact resume)

@pytest.fixture
def kill_after(monkeypatch):
    """``kill_after(step)``: the training loop stops (KeyboardInterrupt) right after writing checkpoint ``step``,
    as a kill would; ``monkeypatch.undo()`` gives the loop back its own save."""
    from latentgen.training import loop as train

    real_save = train.save

    def arm(step: int) -> None:
        def save_then_die(acc, cfg, at, stamp, seconds=0.0, ema=None):
            real_save(acc, cfg, at, stamp, seconds, ema=ema)
            if at == step:
                raise KeyboardInterrupt(f"killed after the step-{step} checkpoint")

        monkeypatch.setattr(train, "save", save_then_die)

    return arm
