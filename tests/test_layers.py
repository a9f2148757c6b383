"""The folders are the layers (DESIGN.md, "Where things live"): what each may import, and what stays pure.

    errors < policy < core < simulate < store, catalog, settings, specfile, loader < observe < runtime < service < bench, cli

A module imports only from its own layer or the ones below it, never in a circle; only farm/runtime
(and the benchmarks that measure bare Ray) import Ray; workers/ know nothing of Ray, S3 or Prometheus;
farm/core, farm/policy and farm/simulate do no I/O and read no clock (invariant 3).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS = [
    ("farm.errors",),
    ("farm.policy",),
    ("farm.core",),
    ("farm.simulate",),
    ("farm.store", "farm.catalog", "farm.settings", "farm.specfile", "farm.loader"),
    ("farm.observe",),
    ("farm.runtime",),
    ("farm.service",),
    ("farm.bench", "farm.cli"),
]
PURE = ("farm/core", "farm/policy", "farm/simulate")


def _modules(folder: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, at any depth of the file, except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return found


def _layer(module: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return None


def test_every_module_is_in_a_layer_and_imports_only_down():
    mods = _modules("farm")
    upward = []
    for name, path in mods.items():
        if name == "farm":
            continue
        mine = _layer(name)
        assert mine is not None, f"{name} is in no layer: put it in one of {LAYERS}"
        for target in _imports(name, path):
            theirs = _layer(target)
            if theirs is not None and theirs > mine:
                upward.append(f"{name} -> {target}")
    assert not upward, upward


def test_no_import_circle():
    mods = _modules("farm")
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for target in _imports(name, path):
            while target and target not in mods:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name and not name.startswith(target + "."):
                targets.add(target)
        edges[name] = targets
    seen: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:  # depth-first, colouring: 1 on the path, 2 done
        seen[node] = 1
        for nxt in sorted(edges[node]):
            if seen.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt) :] + [nxt]))
            if nxt not in seen:
                visit(nxt, path + [nxt])
        seen[node] = 2

    for node in sorted(edges):
        if node not in seen:
            visit(node, [node])


def test_only_the_runtime_imports_ray_and_workers_import_no_machinery():
    offenders = []
    for name, path in {**_modules("farm"), **_modules("workers")}.items():
        for target in _imports(name, path):
            top = target.split(".")[0]
            if top == "ray" and not (name.startswith("farm.runtime") or name.startswith("farm.bench")):
                offenders.append(f"{name} imports ray")
            if name.startswith("workers") and top in ("ray", "minio", "prometheus_client"):
                offenders.append(f"{name} imports {top}")
    assert not offenders, offenders


def test_importing_the_pure_core_pulls_in_nothing_impure():
    code = (
        "import sys, farm.core.engine, farm.core.controller, farm.policy, farm.simulate; "
        "bad = [m for m in ('ray', 'minio', 'prometheus_client', 'structlog', 'farm.store', 'farm.runtime', "
        "'farm.service', 'farm.observe') if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""


def test_no_clock_files_or_network_in_pure_modules():
    forbidden = re.compile(
        r"^\s*(import|from)\s+(time|datetime|os|socket|pathlib|subprocess|urllib|ray|minio|structlog)\b"
        r"|\bopen\(|\btime\.(time|monotonic|perf_counter|sleep)\(|random\.(random|randint|uniform|choice)\(",
        re.M,
    )
    for folder in PURE:
        for path in sorted((ROOT / folder).glob("*.py")):
            hits = forbidden.findall(path.read_text(encoding="utf-8"))
            assert not hits, f"{path.relative_to(ROOT)}: {hits}"
