"""latentgen.backends.cache: converted U-Nets on disk, converted once and then read; bounded, least recently
used first, listed by `latentgen cache`; an unwritable cache converts for the process with a warning."""

import os
import time

import pytest
import torch
from conftest import max_diff

import latentgen
from latentgen.backends import openvino as openvino_unet
from latentgen.backends import runtime


@pytest.fixture(scope="module")
def fast(tiny_folder):
    return latentgen.load(tiny_folder, backend="openvino")


def test_converted_once_then_read_from_the_cache(tiny_folder, fast):
    fast.generate("a cat", seed=0)
    folders = list(runtime.cache_dir().iterdir())
    assert all(not f.name.startswith(".tmp-") for f in folders)  # no half-written conversion left
    assert (runtime.cache_dir() / runtime.weights_hash(fast.unet) / "unet.xml").is_file()
    again = latentgen.load(tiny_folder, backend="openvino")
    assert max_diff(again.generate("a cat", seed=0), fast.generate("a cat", seed=0)) == 0
    assert again.runtime.conversions == 0 and isinstance(again.runtime.for_unet(again.unet), openvino_unet.Compiled)


def test_an_unwritable_cache_converts_for_the_process_with_a_warning(tiny_folder, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LATENTGEN_CACHE", str(blocker))
    fast = latentgen.load(tiny_folder, backend="openvino")
    import openvino

    traces, convert_model = [], openvino.convert_model
    monkeypatch.setattr(openvino, "convert_model", lambda *a, **k: traces.append(1) or convert_model(*a, **k))
    with pytest.warns(RuntimeWarning, match=r"cannot write the OpenVINO cache in .*file/openvino.*Set \$LATENTGEN_CACHE"):
        compiled = fast.runtime.for_unet(fast.unet)
    assert isinstance(compiled, openvino_unet.Compiled) and fast.runtime.conversions == 1
    assert len(traces) == 1  # the cache folder is tried before the trace, not after


def test_the_cache_is_bounded_least_recently_used_first_and_listed(tiny_folder, tmp_path, monkeypatch, capsys):
    from latentgen.backends import cache
    from latentgen.cli import main

    monkeypatch.setenv("LATENTGEN_CACHE", str(tmp_path))
    first = latentgen.load(tiny_folder, backend="openvino")
    first.runtime.for_unet(first.unet)
    (old := tmp_path / "openvino" / ".tmp-killed").mkdir()  # a conversion killed two hours ago
    (new := tmp_path / "openvino" / ".tmp-running").mkdir()
    os.utime(old, (time.time() - 7200,) * 2)
    [a] = cache.entries()
    os.utime(a.folder / "unet.xml", (a.last_used - 100,) * 2)
    latentgen.load(tiny_folder, backend="openvino").runtime.for_unet(first.unet)  # a hit: marked as used now
    assert cache.entries()[0].last_used > a.last_used - 100
    second = latentgen.load(tiny_folder, backend="openvino")
    with torch.no_grad():
        second.unet.conv_out.bias.add_(1.0)  # other weights: another entry
    monkeypatch.setenv(cache.LIMIT_ENV, "0")  # keep only the newest
    second.runtime.for_unet(second.unet)
    [b] = cache.entries()
    assert b.folder.name == runtime.weights_hash(second.unet) != a.folder.name
    assert not old.exists() and new.exists()
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert b.folder.name[:16] in out and "1 converted U-Net(s)" in out and "limit 0 GB" in out
    assert main(["cache", "--clear"]) == 0 and cache.entries() == []
    monkeypatch.setenv(cache.LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=r"\$LATENTGEN_CACHE_GB='lots' is not a size; set it to a number of GB"):
        latentgen.load(tiny_folder, backend="openvino")


def test_an_infinite_cache_limit_means_no_limit(monkeypatch):
    from latentgen.backends import cache

    monkeypatch.setenv(cache.LIMIT_ENV, "inf")
    assert cache.limit_bytes() >= 2**60
