"""The package's imports run one way, from the bottom up (see docs/architecture.md).

Every import counts, at module level or inside a function: a lazy import is still a dependency. Floors:

    0  errors, config, _version, folders        (leaves)
    1  data, layers, draw                       (primitives)
    2  backbones, weights                       (timm wrappers)
    3  models                                   (methods)
    4  engine                                   (loop, evaluation, checkpoints)
    5  report, viz, export, predict, probe, speed, benchmark, demo
    6  cli
A module may import from its own floor or below, never from above, and no set of modules may import
each other in a circle. The package's ``__init__`` is a lazy facade and is left out.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lookcloser"
FLOORS = [
    ("errors", "config", "_version", "folders"),
    ("data", "layers", "draw"),
    ("backbones", "weights"),
    ("models",),
    ("engine",),
    ("report", "viz", "export", "predict", "probe", "speed", "benchmark", "demo"),
    ("cli",),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["lookcloser", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                names = subs if subs and len(subs) == len(node.names) else [base, *subs]
            for name in names:
                while name not in mods and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in mods and name != mod and name.startswith("lookcloser."):
                    deps.add(name)
        graph[mod] = deps
    graph.pop("lookcloser", None)
    return graph


def _floor(mod: str) -> int:
    top = mod.split(".")[1]
    for n, names in enumerate(FLOORS):
        if top in names:
            return n
    raise AssertionError(f"{mod} has no floor; add it to FLOORS and to docs/architecture.md")


GRAPH = _imports(_modules())


def test_every_module_has_a_floor_and_imports_only_downwards():
    upward = [f"{a} (floor {_floor(a)}) imports {b} (floor {_floor(b)})"
              for a, deps in sorted(GRAPH.items()) for b in sorted(deps) if _floor(b) > _floor(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    # Tarjan's strongly connected components: any component of two or more modules is a cycle
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, cycles


@pytest.mark.parametrize("floor", ["layers", "models"])
def test_layers_and_models_never_import_the_engine(floor):
    bad = [(a, b) for a, deps in GRAPH.items() if a.startswith(f"lookcloser.{floor}")
           for b in deps if b.split(".")[1] in ("engine", "report", "viz", "export", "predict", "speed",
                                                "benchmark", "cli")]
    assert not bad, bad


@pytest.mark.parametrize("module", ["lookcloser.layers", "lookcloser.layers.trilinear", "lookcloser.models"])
def test_importing_a_lower_floor_loads_no_engine_module(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m.startswith(('lookcloser.engine', 'lookcloser.report', "
            "'lookcloser.cli', 'lookcloser.viz'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_facade_exposes_the_public_api_lazily():
    code = ("import sys, lookcloser; before = set(sys.modules); from lookcloser import create_model, Predictor; "
            "print('lookcloser.engine.trainer' in before, callable(create_model), callable(Predictor))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True", "True"], out.stdout + out.stderr
