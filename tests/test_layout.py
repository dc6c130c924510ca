"""The package's shape: the top level reads as the pipeline (at most 12 modules; the rest in subpackages by
concept), tests mirror the package, one name per meaning, no import cycles, no mixins, no private names
imported across modules, no import-time work, files and functions that fit on a screen or two."""

import ast
import subprocess
import sys
from pathlib import Path

import latentgen

PKG = Path(latentgen.__file__).parent
TESTS = Path(__file__).resolve().parent
PROJECT_TESTS = {"test_layout", "test_docs", "test_notebooks", "test_requirements"}  # of the project, not a module
FEATURE_TESTS = ("serve", "cli", "benchmarks")  # tested as a whole: the HTTP API, the command line


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        if "_data" in path.relative_to(PKG).parts:  # a wheel's copy of pipelines/ and weights/: data, not modules
            continue
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text())


def _imports(name, path, tree):
    """(module imported, names) of every import in the file, function-level ones included."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            yield base, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def _graph():
    mods = {n: (p, t) for n, p, t in _modules()}
    graph = {}
    for name, (path, tree) in mods.items():
        deps = set()
        for base, names in _imports(name, path, tree):
            for target in [base] + [f"{base}.{n}" for n in names]:
                if target in mods and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def test_the_graph_sees_the_imports():
    g = _graph()
    assert "latentgen.pipeline" in g["latentgen"] and "latentgen.training.loop" in g["latentgen.training.finetune"]


def _cycles(g):
    state, cycles = {}, []

    def visit(n, stack):
        state[n] = "open"
        for d in sorted(g.get(n, ())):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[n] = "done"

    for n in sorted(g):
        if n not in state:
            visit(n, [n])
    return cycles


def test_no_import_cycles():
    """Function-level (lazy) imports count too. A module's edge to its own parent package is not
    counted: importing a submodule always imports its parent first."""
    g = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in _graph().items()}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]  # the check can fail
    assert _cycles(g) == []


def test_no_mixins_and_no_private_imports_across_modules():
    mixins, private = [], []
    for name, path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and "Mixin" in node.name:
                mixins.append(f"{name}.{node.name}")
        for base, names in _imports(name, path, tree):
            if base.startswith("latentgen"):
                private += [f"{name}: {base}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert mixins == [] and private == []


def test_files_and_functions_stay_short():
    long = []
    for name, path, tree in _modules():
        if len(path.read_text().splitlines()) > 300:
            long.append(f"{name}: {len(path.read_text().splitlines())} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []


def test_importing_does_no_work():
    """Importing every module loads no model, touches no hub, prints nothing."""
    code = "import importlib, pkgutil, latentgen\n" + "".join(
        f"importlib.import_module({n!r})\n" for n, _, _ in _modules() if not n.endswith("__main__"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""


def test_the_top_level_reads_as_the_pipeline():
    top = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= 12, top
    assert {"pipeline", "request", "starts", "schedulers", "images", "guard"} <= set(top)


def _library_modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if path.stem not in ("__init__", "__main__") and rel.parts[0] not in (*FEATURE_TESTS, "_data"):
            yield rel


def test_tests_mirror_the_package():
    """latentgen/a/b.py is tested in tests/a/test_b.py; every test module names a library module (or the script
    beside the data it builds, tests/pipelines/), but for the project's own and the features tested whole."""
    missing = [str(rel) for rel in _library_modules() if not (TESTS / rel.parent / f"test_{rel.name}").is_file()]
    assert missing == []
    orphans = []
    for test in sorted(TESTS.rglob("test_*.py")):
        rel = test.relative_to(TESTS)
        if rel.parts[0] in FEATURE_TESTS or (len(rel.parts) == 1 and test.stem in PROJECT_TESTS):
            continue
        target = rel.parent / f"{test.stem.removeprefix('test_')}.py"
        if not ((PKG / target).is_file() or (TESTS.parent / target).is_file()):
            orphans.append(str(rel))
    assert orphans == []


def test_one_name_per_meaning():
    """No two classes of the package share a name, no two modules share a file name (but the command line's
    front ends, cli/X.py for the X they run), and one seed bound is defined."""
    classes: dict[str, list[str]] = {}
    names: dict[str, list[str]] = {}
    bounds = []
    for name, path, tree in _modules():
        if path.stem not in ("__init__", "__main__"):
            names.setdefault(path.stem, []).append(name)
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, []).append(name)
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "MAX_SEED" for t in node.targets):
                bounds.append(name)
    assert {k: v for k, v in classes.items() if len(v) > 1} == {}
    assert {k: v for k, v in names.items() if len([m for m in v if ".cli." not in m]) > 1} == {}
    assert bounds == ["latentgen.request"]
