"""pipelines/fit_preview.py: the embedded model's cheap-preview map is what the script fits, and beats SD's."""

import importlib.util
import json
from pathlib import Path

import torch

_SCRIPT = Path(__file__).resolve().parents[2] / "pipelines" / "fit_preview.py"
_spec = importlib.util.spec_from_file_location("fit_preview", _SCRIPT)
fit_preview = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fit_preview)


def test_the_shipped_map_is_the_scripts_fit_in_the_preset_and_the_folder(capsys):
    import latentgen
    from latentgen.vae import preview

    scenes = fit_preview.scenes(4)
    assert scenes.shape == (4, 3, 64, 64) and scenes.min() >= -1 and scenes.max() <= 1
    root = _SCRIPT.parents[1]
    shipped = json.loads((root / "pipelines" / "default.json").read_text())["defaults"]["preview"]
    assert json.loads((root / "weights" / "default" / "latentgen.json").read_text())["preview"] == shipped
    vae = latentgen.load(dtype="fp32", backend="torch").vae
    again = preview.fit_vae(vae, fit_preview.scenes(256))
    assert torch.allclose(torch.tensor(again), torch.tensor(shipped), atol=1e-3)
    assert fit_preview.main(["-n", "32", "--dry-run"]) == 0
    fitted, sd = (float(line.split("|error| ")[1].split()[0]) for line in capsys.readouterr().out.splitlines()[:2])
    assert fitted < 0.5 * sd
