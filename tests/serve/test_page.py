"""The web page at / in a real browser: headless Debian Chromium (/usr/bin/chromium) driven by Playwright.

A person's path: type a prompt, click Generate, watch the progress bar count steps, get an image whose
pixels the shapes evaluator reads as the prompt; paint a mask on the canvas and inpaint, the result
equal to the Python API's for that very mask. Playwright's own browser downloads are not used
(``playwright install`` is never run): CI installs Debian's ``chromium`` (.ci/run).

Set LATENTGEN_SCREENSHOT=1 to refresh notebooks/serve-page.png (the README's screenshot) from this test.
"""

import base64
import io
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="latentgen serve needs the [serve] extra: pip install 'latentgen[serve]'")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install -y chromium) to run the "
                f"browser tests", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser driver: pip install playwright "
                                                              "(in the [dev] extra; no browser download needed)")

from PIL import Image  # noqa: E402
from serving import Served, green, max_diff, reference  # noqa: E402

from latentgen.embedded import shapes  # noqa: E402
from latentgen.serve import ServeConfig  # noqa: E402

SCREENSHOT = Path(__file__).resolve().parents[2] / "notebooks" / "serve-page.png"


@pytest.fixture(scope="module")
def served():
    s = Served(ServeConfig())
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, served):
    page = browser.new_page(viewport={"width": 1120, "height": 760})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(served.url + "/")
    page.wait_for_function("document.querySelector('#sampler').options.length > 1")  # the lists loaded
    yield page
    page.close()
    assert not errors, errors


def fill(page, **fields) -> None:
    """Type each field's value into its input: ``mask_blur=2`` fills ``#mask-blur``."""
    for name, value in fields.items():
        page.fill("#" + name.replace("_", "-"), str(value))


def data_url_image(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_type_a_prompt_click_generate_get_the_image(page, served):
    # Hold the worker with a job that reports step 5 of 10, so the bar's step count is seen for sure.
    release, held = threading.Event(), {}

    def hold(ctx):
        import torch

        ctx.pipeline()
        ctx.callback(0, 1)(5, 10, torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8))  # a preview every 5 steps
        release.wait(30)
        held["skipped"] = ctx.job.skipped.is_set()  # the Skip button's POST reached the job running

    served.server_state.worker.submit("hold", hold)
    assert page.is_hidden("#styles-row")  # no --styles-file: no styles to offer
    fill(page, prompt="a red circle on a blue background", seed=1, steps=12)
    page.select_option("#sampler", "Euler a")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#progress-text').textContent.startsWith('Step 5/10')")
    assert 45 <= float(page.eval_on_selector("#progress-bar", "e => parseFloat(e.style.width)")) <= 55
    page.wait_for_selector("#preview:not([hidden])")  # the running job's preview
    assert page.is_enabled("#interrupt") and page.is_enabled("#skip") and not page.is_enabled("#generate")
    page.click("#skip")
    deadline = time.monotonic() + 10
    while not served.server_state.worker.progress.skipped and time.monotonic() < deadline:
        time.sleep(0.05)
    release.set()

    page.wait_for_selector("#gallery img.result", timeout=120_000)
    image = data_url_image(page.get_attribute("#gallery img.result", "src"))
    r = shapes.read(image)
    assert (r.color, r.shape, r.background) == ("red", "circle", "blue"), r
    want = reference().generate("a red circle on a blue background", seed=1, steps=12, scheduler="euler_a")[0]
    assert max_diff(image, want) <= 1
    assert page.inner_text("#progress-text") == "done: 1 image(s), seed 1" and held["skipped"]
    params = page.inner_text("#gallery .params")
    assert params == want.info["parameters"]
    link = page.query_selector("#gallery a[download]")
    assert link.get_attribute("download") == "latentgen-1.png"
    assert data_url_image(link.get_attribute("href")).info["parameters"] == params  # the PNG keeps its metadata


def test_paint_a_mask_and_inpaint(page, served, tmp_path):
    start = tmp_path / "green.png"
    green().save(start)
    page.check("input[name=mode][value=inpaint]")
    page.set_input_files("#init-file", str(start))
    page.wait_for_function("document.querySelector('#init-canvas').width === 64 && "
                           "document.querySelector('#init-canvas').getContext('2d').getImageData(5, 5, 1, 1).data[1] > 100")
    page.eval_on_selector("#brush", "e => { e.value = 8; }")  # pixels of the image
    box = page.query_selector("#mask-canvas").bounding_box()  # 256 px on screen for 64 image pixels
    px = lambda x, y: (box["x"] + x * box["width"] / 64, box["y"] + y * box["height"] / 64)  # noqa: E731
    page.mouse.move(*px(24, 24))
    page.mouse.down()
    for y in (24, 32, 40):  # a filled square, about 22..42 in image pixels
        page.mouse.move(*px(24, y), steps=2)
        page.mouse.move(*px(40, y), steps=4)
    page.mouse.up()
    mask = data_url_image(page.evaluate("maskPNG()")).convert("L")  # what the page sends
    init = data_url_image(page.evaluate("document.querySelector('#init-canvas').toDataURL('image/png')")).convert("RGB")
    assert max_diff(init, green()) == 0
    assert 250 < sum(v > 127 for v in mask.getdata()) < 700  # roughly the painted square
    fill(page, prompt="a red square on a green background", seed=3, steps=20, strength=1, mask_blur=2)
    page.click("#generate")
    page.wait_for_selector("#gallery img.result", timeout=120_000)
    image = data_url_image(page.get_attribute("#gallery img.result", "src")).convert("RGB")
    want = reference().inpaint("a red square on a green background", init, mask, strength=1.0, mask_blur=2,
                               seed=3, steps=20, scheduler=None)[0]
    assert max_diff(image, want) <= 1
    r = shapes.read(image)
    assert (r.color, r.background) == ("red", "green"), r
    keep = [i for i, v in enumerate(mask.getdata()) if v == 0]
    assert all(image.getdata()[i] == init.getdata()[i] for i in keep)  # outside the mask: the input's pixels
    shot = tmp_path / "serve-page.png"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("LATENTGEN_SCREENSHOT"):
        shutil.copyfile(shot, SCREENSHOT)


def test_a_control_image_places_the_shape(page, served, tmp_path):
    """The ControlNet panel: an edge map, the shipped ``edges`` ControlNet, no preprocessor: the picture equals the
    Python API's with that ``latentgen.Control``, and its parameters carry the unit's line."""
    from latentgen import Control
    from latentgen.control import preprocess

    edges = preprocess.run("canny", shapes.draw(shapes.Scene("red", "square", "blue", 22.0, 40.0, 12.0)))
    edges.save(tmp_path / "edges.png")
    page.click("#controlnet summary")
    assert "edges" in page.eval_on_selector("#control-model", "s => [...s.options].map(o => o.value)")
    page.set_input_files("#control-file", str(tmp_path / "edges.png"))
    page.wait_for_selector("#control-thumb:not([hidden])")
    page.select_option("#control-model", "edges")
    page.select_option("#control-module", "none")
    fill(page, prompt="a red square on a blue background", seed=2, steps=12)
    page.click("#generate")
    page.wait_for_selector("#gallery img.result", timeout=120_000)
    image = data_url_image(page.get_attribute("#gallery img.result", "src")).convert("RGB")
    want = reference().generate("a red square on a blue background", seed=2, steps=12,
                                control=Control(edges, "edges"))[0]
    assert max_diff(image, want) <= 1
    assert 'ControlNet 0: "Module: none, Model: edges, Weight: 1' in page.inner_text("#gallery .params")


def test_an_sdxl_model_with_the_refiner_and_the_hires_panels(browser, xl_folder, xl_refiner_folder, tmp_path):
    """A server whose models are a tiny SDXL base and refiner: the Refiner panel (checkpoint, switch at) and the
    Hires fix panel (upscaler, scale, steps, denoising) give the Python API's pictures and infotexts."""
    import latentgen

    os.symlink(xl_folder, tmp_path / "tiny-xl")
    os.symlink(xl_refiner_folder, tmp_path / "tiny-xl-refiner")
    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\nflat,\"{prompt}, flat colors\",blurry\n")
    vae = _vae_file(xl_folder, tmp_path / "vae" / "warm.safetensors")
    s = Served(ServeConfig(model="tiny-xl", models_dir=tmp_path, styles_file=tmp_path / "styles.csv",
                           vae_dir=vae.parent))
    page = browser.new_page(viewport={"width": 1120, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(s.url + "/")
        page.wait_for_function("document.querySelector('#hr-upscaler').options.length > 1")
        assert page.input_value("#model") == "tiny-xl"
        upscalers = page.eval_on_selector("#hr-upscaler", "s => [...s.options].map(o => o.value)")
        assert upscalers[0] == "Latent" and "Lanczos" in upscalers and "None" not in upscalers
        fill(page, prompt="a red circle", seed=2, steps=4, cfg=5)
        page.select_option("#sampler", "Euler")
        page.click("#refiner summary")
        page.select_option("#refiner-model", "tiny-xl-refiner")
        page.fill("#refiner-switch", "0.5")
        page.click("#generate")
        page.wait_for_selector("#gallery img.result", timeout=120_000)
        image = data_url_image(page.get_attribute("#gallery img.result", "src")).convert("RGB")
        base = latentgen.load(xl_folder)
        want = base.generate("a red circle", seed=2, steps=4, guidance=5.0, scheduler="euler",
                             refiner=latentgen.Refiner(latentgen.load(xl_refiner_folder), 0.5))[0]
        assert max_diff(image, want) <= 1
        assert "Refiner: tiny-xl-refiner, Refiner switch at: 0.5" in page.inner_text("#gallery .params")

        page.select_option("#refiner-model", "")  # none: the hires fix alone, and tiling
        page.click("#hires summary")
        page.check("#hr-on")
        page.select_option("#hr-upscaler", "Lanczos")
        fill(page, hr_scale=1.5, hr_steps=2, hr_strength=0.5)
        page.check("#tiling")
        page.select_option("#styles", ["flat"])  # the styles of --styles-file, listed when there are any
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('#gallery img.result').length === 2", timeout=120_000)
        image = data_url_image(page.get_attribute("#gallery img.result", "src")).convert("RGB")  # the newest first
        want = base.generate("a red circle, flat colors", negative_prompt="blurry", seed=2, steps=4, guidance=5.0,
                             scheduler="euler", hires=latentgen.Hires(scale=1.5, strength=0.5, steps=2,
                                                                      upscaler="Lanczos"), tiling=True)[0]
        assert image.size == want.size == (96, 96) and max_diff(image, want) <= 1
        params = page.inner_text("#gallery .params")
        assert all(f in params for f in ("Hires upscale: 1.5", "Hires upscaler: Lanczos", "Tiling: True"))
        assert "Refiner" not in params and "Hires checkpoint" not in params
        assert page.eval_on_selector("#hr-model", "s => [...s.options].map(o => o.value)") == [
            "", "default", "tiny-xl", "tiny-xl-refiner"]  # "Use same checkpoint", then the models
        page.select_option("#hr-model", "tiny-xl-refiner")  # A1111's hr_checkpoint_name: the refiner draws the pass
        page.uncheck("#tiling")
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('#gallery img.result').length === 3", timeout=120_000)
        image = data_url_image(page.get_attribute("#gallery img.result", "src")).convert("RGB")
        want = base.generate("a red circle, flat colors", negative_prompt="blurry", seed=2, steps=4, guidance=5.0,
                             scheduler="euler", hires=latentgen.Hires(scale=1.5, strength=0.5, steps=2, upscaler="Lanczos",
                                                                      model=latentgen.load(xl_refiner_folder)))[0]
        assert max_diff(image, want) <= 1 and "Hires checkpoint: tiny-xl-refiner" in page.inner_text("#gallery .params")

        page.select_option("#hr-model", "")  # A1111's SD VAE quick setting: the jobs after decode with that file's
        page.uncheck("#hr-on")
        assert page.is_visible("#vae") and page.input_value("#vae") == "Automatic"
        page.select_option("#vae", "warm.safetensors")
        page.wait_for_function("fetch('/sdapi/v1/options').then(r => r.json()).then(o => o.sd_vae === 'warm.safetensors')")
        page.click("#generate")
        page.wait_for_function("document.querySelectorAll('#gallery img.result').length === 4", timeout=120_000)
        image = data_url_image(page.get_attribute("#gallery img.result", "src")).convert("RGB")
        want = latentgen.load(xl_folder, vae=vae).generate("a red circle, flat colors", negative_prompt="blurry", seed=2,
                                                           steps=4, guidance=5.0, scheduler="euler")[0]
        assert max_diff(image, want) <= 1 and "VAE: warm.safetensors" in page.inner_text("#gallery .params")
        page.check("input[name=mode][value=img2img]")
        assert page.is_hidden("#hires") and not page.is_hidden("#refiner")  # hires is txt2img's; a refiner is both's
        assert page.is_visible("#source") and page.is_hidden("#mask-tools")  # the mask tools are inpainting's
    finally:
        page.close()
        s.stop()
    assert not errors, errors


def _vae_file(folder, path: Path) -> Path:
    """A VAE file (LDM layout) of the model in ``folder`` with every weight moved: another VAE of its family."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from latentgen.models import ldm

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    moved = {k: v * 1.1 for k, v in vae.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ldm.vae_to_ldm(moved, vae.config, prefix="").items()}, str(path))
    return path
