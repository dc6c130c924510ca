"""Fit the embedded model's cheap-preview map (``defaults.preview``, ``latentgen.vae.preview``) and write it into
``pipelines/default.json``, ``weights/default/latentgen.json`` and that folder's manifest (its sha256).

SD's latent -> RGB coefficients mean nothing in the embedded model's latent space, so its map is fitted by least
squares on its own VAE: the latents of drawn flat-shape scenes against the VAE's decodes of them. Run from the
repository root, by hand, when the VAE changes::

    python pipelines/fit_preview.py            # prints the map and its error against SD's coefficients
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def scenes(n: int, seed: int = 0) -> torch.Tensor:
    """n drawn flat-shape scenes (N, 3, 64, 64) in [-1, 1]."""
    from latentgen.embedded import shapes
    from latentgen.images import to_tensor

    return torch.cat([to_tensor(shapes.sample(seed + i)[0]) for i in range(n)])


def write(rgb: list) -> None:
    preset = ROOT / "pipelines" / "default.json"
    d = json.loads(preset.read_text())
    d["defaults"]["preview"] = rgb
    preset.write_text(json.dumps(d, indent=2) + "\n")
    folder = ROOT / "weights" / "default"
    own = json.loads((folder / "latentgen.json").read_text())
    own["preview"] = rgb
    (folder / "latentgen.json").write_text(json.dumps(own, indent=1) + "\n")
    from latentgen.embedded.ship import listing

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in listing(folder).items() if k != "manifest.json"}
    manifest["total_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=256, help="scenes to fit on (default 256)")
    ap.add_argument("--dry-run", action="store_true", help="print, write nothing")
    args = ap.parse_args(argv)
    import latentgen
    from latentgen.vae import preview

    vae = latentgen.load(dtype="fp32", backend="torch").vae
    rgb = preview.fit_vae(vae, scenes(args.n))
    held = scenes(64, seed=10_000)  # scenes the fit did not see
    with torch.no_grad():
        z = vae.encode(held).latent_dist.mean * vae.config.scaling_factor
        decoded = vae.decode(z / vae.config.scaling_factor).sample
    for name, m in (("fitted", torch.tensor(rgb)), ("SD's", preview.rgb_map(None, 4))):
        print(f"{name}: mean |error| {preview.error(z, decoded, m):.4f} on 64 held-out scenes")
    print(json.dumps(rgb))
    if not args.dry_run:
        write(rgb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
