"""The installed libraries are within what latentgen declares: drift shows as one readable failure."""

from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement


def outside_declared(extras=("dev",)) -> list[str]:
    """One line per declared requirement (base and ``extras``) that the installed versions miss."""
    bad = []
    for line in requires("latentgen") or []:
        req = Requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            continue  # an extra we do not test with (e.g. cuda)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            bad.append(f"{req.name} is not installed; latentgen needs {req.name}{req.specifier}")
            continue
        if not req.specifier.contains(have, prereleases=True):
            bad.append(f"{req.name} {have} is installed; latentgen needs {req.name}{req.specifier}")
    return bad


def test_installed_versions_are_within_the_declared_ranges():
    bad = outside_declared()
    assert not bad, ("installed libraries are outside latentgen's declared requirements (pyproject.toml):\n  "
                     + "\n  ".join(bad) + "\nReinstall with `pip install -U \".[dev]\"`, or widen the range in "
                     "pyproject.toml after running the tests on that version.")


def test_the_check_names_a_library_outside_its_range(monkeypatch):
    import sys

    here = sys.modules[__name__]
    torch_version = version("torch")
    monkeypatch.setattr(here, "requires", lambda name: ["torch<1", "surely-not-installed-pkg>=1",
                                                        'xformers; extra == "cuda"', f"torch=={torch_version}"])
    bad = outside_declared()
    assert len(bad) == 2, bad
    assert bad[0] == f"torch {torch_version} is installed; latentgen needs torch<1"
    assert "surely-not-installed-pkg is not installed" in bad[1]
