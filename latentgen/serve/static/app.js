// latentgen's page: a plain client of the server's A1111 API (/sdapi/v1/...). No build step, no libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const api = (path) => "/sdapi/v1/" + path;

async function getJSON(path, options) {
  const r = await fetch(api(path), options);
  const data = await r.json().catch(() => null);
  if (!r.ok) {
    const detail = data && data.detail !== undefined ? data.detail : r.statusText;
    throw new Error(`${r.status}: ${typeof detail === "string" ? detail : (data.errors || JSON.stringify(detail))}`);
  }
  return data;
}

const postJSON = (path, body) =>
  getJSON(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

// -- the lists: models, samplers, LoRAs ---------------------------------------------------------------
function fillSelect(select, items, keepFirst) {
  if (!keepFirst) select.innerHTML = "";
  for (const [value, text] of items) select.add(new Option(text, value));
}

async function loadLists() {
  const [models, options, samplers, loras, latent, upscalers, styles, vaes] = await Promise.all(
    [getJSON("sd-models"), getJSON("options"), getJSON("samplers"), getJSON("loras"), getJSON("latent-upscale-modes"),
     getJSON("upscalers"), getJSON("prompt-styles").catch(() => []), getJSON("sd-vae").catch(() => [])]);
  fillSelect($("vae"), vaes.map((v) => [v.model_name, v.model_name]), true);  // A1111's SD VAE quick setting
  $("vae").value = vaes.some((v) => v.model_name === options.sd_vae) ? options.sd_vae : "Automatic";
  $("vae-label").hidden = vaes.length === 0;  // no --vae-dir
  fillSelect($("styles"), styles.map((s) => [s.name, s.name]));
  $("styles-row").hidden = styles.length === 0;  // no --styles-file
  fillSelect($("model"), models.map((m) => [m.title, m.model_name]));
  fillSelect($("refiner-model"), models.map((m) => [m.model_name, m.model_name]), true);
  fillSelect($("hr-model"), models.map((m) => [m.model_name, m.model_name]), true);
  // the hires upscalers as A1111's page lists them: the latent modes, then the pixel ones and model files
  fillSelect($("hr-upscaler"), [...latent, ...upscalers].map((u) => u.name).filter((n) => n !== "None").map((n) => [n, n]));
  $("model").value = options.sd_model_checkpoint;
  fillSelect($("sampler"), samplers.map((s) => [s.name, s.name]), true);
  fillSelect($("lora"), loras.map((l) => [l.name, l.alias]));
  $("lora-add").disabled = loras.length === 0;
  const [nets, modules] = await Promise.all([fetch("/controlnet/model_list"), fetch("/controlnet/module_list")]
    .map((p) => p.then((r) => r.json())));
  fillSelect($("control-model"), nets.model_list.map((n) => [n, n]));
  fillSelect($("control-module"), modules.module_list.map((n) => [n, n]));
  $("controlnet").hidden = nets.model_list.length === 0;  // no ControlNet for this server
}

// -- ControlNet: one unit, sent as sd-webui-controlnet's (alwayson_scripts.controlnet) -----------------
let controlImage = null;

$("control-file").addEventListener("change", () => {
  const file = $("control-file").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => { controlImage = reader.result; $("control-thumb").src = controlImage; $("control-thumb").hidden = false; };
  reader.readAsDataURL(file);
});
$("control-clear").addEventListener("click", () => {
  controlImage = null;
  $("control-file").value = "";
  $("control-thumb").hidden = true;
});

function controlUnits() {
  if (!controlImage || !$("control-model").value) return undefined;
  return { controlnet: { args: [{ image: controlImage, model: $("control-model").value, module: $("control-module").value,
                                  weight: number("control-weight") ?? 1, resize_mode: "Crop and Resize",
                                  processor_res: -1 }] } };
}

$("model").addEventListener("change", async () => {
  $("status").textContent = "loading " + $("model").value + " ...";
  try {
    await postJSON("options", { sd_model_checkpoint: $("model").value });
    $("status").textContent = "";
  } catch (e) {
    $("status").textContent = "";
    showError(e.message);
  }
});

$("vae").addEventListener("change", async () => {
  try {
    await postJSON("options", { sd_vae: $("vae").value });  // every job after draws with it
  } catch (e) {
    showError(e.message);
  }
});

$("lora-add").addEventListener("click", () => {
  const tag = `<lora:${$("lora").value}:${$("lora-weight").value || 1}>`;
  $("prompt").value = ($("prompt").value.trim() + " " + tag).trim();
});

// -- modes and the start image ------------------------------------------------------------------------
const mode = () => document.querySelector("input[name=mode]:checked").value;

function showMode() {
  $("source").hidden = mode() === "txt2img";
  $("mask-tools").hidden = mode() !== "inpaint";
  $("mask-canvas").style.pointerEvents = mode() === "inpaint" ? "auto" : "none";
  $("mask-canvas").style.visibility = mode() === "inpaint" ? "visible" : "hidden";
  $("size-row").querySelectorAll("#width, #height").forEach((el) => (el.disabled = mode() !== "txt2img"));
  $("hires").hidden = mode() !== "txt2img";  // A1111's hires fix is txt2img's
}
document.querySelectorAll("input[name=mode]").forEach((el) => el.addEventListener("change", showMode));

let hasSource = false;

function setSource(src) {
  const image = new Image();
  image.onload = () => {
    for (const canvas of [$("init-canvas"), $("mask-canvas")]) {
      canvas.width = image.naturalWidth;
      canvas.height = image.naturalHeight;
    }
    $("init-canvas").getContext("2d").drawImage(image, 0, 0);
    $("brush").max = Math.max(8, Math.round(Math.max(image.naturalWidth, image.naturalHeight) / 2));
    $("brush").value = Math.max(1, Math.round(Math.max(image.naturalWidth, image.naturalHeight) / 8));
    hasSource = true;
  };
  image.src = src;
}

$("init-file").addEventListener("change", () => {
  const file = $("init-file").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => setSource(reader.result);
  reader.readAsDataURL(file);
});

// -- painting the mask: white repaints; the canvas holds the image's own pixels -----------------------
const mask = $("mask-canvas");
let last = null;

function paintTo(event) {
  const rect = mask.getBoundingClientRect();
  const p = [(event.clientX - rect.left) * mask.width / rect.width, (event.clientY - rect.top) * mask.height / rect.height];
  const ctx = mask.getContext("2d");
  ctx.strokeStyle = ctx.fillStyle = "#fff";
  ctx.lineWidth = Number($("brush").value);
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(...(last || p));
  ctx.lineTo(...p);
  ctx.stroke();
  last = p;
}

mask.addEventListener("pointerdown", (e) => { mask.setPointerCapture(e.pointerId); last = null; paintTo(e); });
mask.addEventListener("pointermove", (e) => { if (last) paintTo(e); });
mask.addEventListener("pointerup", () => { last = null; });
$("mask-clear").addEventListener("click", () => mask.getContext("2d").clearRect(0, 0, mask.width, mask.height));

function maskPNG() {  // the painted strokes on black: the mask the API takes
  const out = document.createElement("canvas");
  out.width = mask.width;
  out.height = mask.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.drawImage(mask, 0, 0);
  return out.toDataURL("image/png");
}

// -- a request ----------------------------------------------------------------------------------------
function number(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

function payload() {
  const count = Math.max(1, number("count") || 1);
  const body = {
    prompt: $("prompt").value, negative_prompt: $("negative").value, seed: number("seed") ?? -1,
    steps: number("steps"), cfg_scale: number("cfg"), sampler_name: $("sampler").value || undefined,
    batch_size: 1, n_iter: count, alwayson_scripts: controlUnits(), tiling: $("tiling").checked,
    styles: [...$("styles").selectedOptions].map((o) => o.value),
  };
  if ($("refiner-model").value) {
    Object.assign(body, { refiner_checkpoint: $("refiner-model").value, refiner_switch_at: number("refiner-switch") ?? 0.8 });
  }
  if (mode() === "txt2img" && $("hr-on").checked) {
    Object.assign(body, { enable_hr: true, hr_upscaler: $("hr-upscaler").value, hr_scale: number("hr-scale") ?? 2,
                          hr_second_pass_steps: number("hr-steps") ?? 0, denoising_strength: number("hr-strength") ?? 0.7,
                          hr_checkpoint_name: $("hr-model").value || "Use same checkpoint" });
  }
  if (mode() === "txt2img") return { ...body, width: number("width"), height: number("height") };
  if (!hasSource) throw new Error("choose a start image first (or 'use as input' under a result).");
  const init = $("init-canvas");
  Object.assign(body, { init_images: [init.toDataURL("image/png")], width: init.width, height: init.height,
                        denoising_strength: number("strength") ?? 0.75 });
  if (mode() === "inpaint") {
    Object.assign(body, { mask: maskPNG(), mask_blur: number("mask-blur") ?? 4, inpainting_fill: 1,
                          inpaint_full_res: $("only-masked").checked, inpaint_full_res_padding: number("padding") ?? 32 });
  }
  return body;
}

// -- progress -----------------------------------------------------------------------------------------
let polling = null;

async function poll() {
  try {
    const p = await getJSON("progress?skip_current_image=false");
    if (polling === null) return;  // the answer came after the job ended
    const s = p.state;
    $("progress-bar").style.width = `${Math.round(p.progress * 100)}%`;
    if (s.sampling_steps) {
      let text = `Step ${s.sampling_step}/${s.sampling_steps}`;
      if (s.job_count > 1) text += ` · image ${s.job_no + 1}/${s.job_count}`;
      if (p.eta_relative > 0) text += ` · ${p.eta_relative.toFixed(1)} s left`;
      $("progress-text").textContent = text;
    } else if (s.queued) {
      $("progress-text").textContent = `waiting: ${s.queued} job(s) queued`;
    }
    if (p.current_image) {
      $("preview").src = "data:image/png;base64," + p.current_image;
      $("preview").hidden = false;
    }
  } catch (e) { /* the next poll tries again */ }
}

function busy(on) {
  $("generate").disabled = on;
  $("interrupt").disabled = !on;
  $("skip").disabled = !on;
  clearInterval(polling);
  polling = null;
  if (on) {
    $("progress-bar").style.width = "0";
    $("progress-text").textContent = "queued";
    polling = setInterval(poll, 250);
  } else {
    $("preview").hidden = true;
  }
}

$("interrupt").addEventListener("click", () => postJSON("interrupt", {}).catch((e) => showError(e.message)));
$("skip").addEventListener("click", () => postJSON("skip", {}).catch((e) => showError(e.message)));

// -- the gallery --------------------------------------------------------------------------------------
function addResult(b64, parameters, seed) {
  const card = document.createElement("figure");
  card.className = "card";
  const src = "data:image/png;base64," + b64;
  const img = Object.assign(document.createElement("img"), { src, alt: parameters.split("\n")[0], className: "result" });
  const text = Object.assign(document.createElement("pre"), { textContent: parameters, className: "params" });
  const link = Object.assign(document.createElement("a"), { href: src, download: `latentgen-${seed}.png`, textContent: "download PNG" });
  const use = Object.assign(document.createElement("button"), { type: "button", textContent: "use as input" });
  use.addEventListener("click", () => {
    setSource(src);
    document.querySelector("input[name=mode][value=img2img]").click();
  });
  const caption = document.createElement("figcaption");
  caption.append(text, link, " ", use);
  card.append(img, caption);
  $("gallery").prepend(card);
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  let body;
  try {
    body = payload();
  } catch (e) {
    showError(e.message);
    return;
  }
  busy(true);
  try {
    const data = await postJSON(mode() === "txt2img" ? "txt2img" : "img2img", body);
    const info = JSON.parse(data.info);
    data.images.forEach((b64, i) => addResult(b64, info.infotexts[i], info.all_seeds[i]));
    $("progress-bar").style.width = "100%";
    $("progress-text").textContent = info.interrupted
      ? `interrupted: ${data.images.length} image(s)`
      : `done: ${data.images.length} image(s), seed ${info.seed}`;
  } catch (e) {
    showError(e.message);
    $("progress-text").textContent = "failed";
  } finally {
    busy(false);
  }
});

showMode();
loadLists().catch((e) => showError("could not load the lists: " + e.message));
