"""The package's layers and the core's parts import only what docs/design.md allows.

Every ``import`` of every module counts, at module level or inside a function (run-time imports
included), so that no cycle hides behind a lazy import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import napari_unet

PACKAGE = Path(napari_unet.__file__).parent
WIDGET_LINES = 500
PARTS = {  # a part of the core: the parts it may import (besides itself)
    "image": set(),
    "edit": set(),
    "metrics": set(),
    "formats": {"image"},
    "network": {"image", "formats"},
    "prediction": {"image", "network"},
    "training": {"image", "network", "prediction", "metrics"},
    "large": {"image", "formats", "network", "prediction"},
}
LAYERS = {  # a module outside the core: the modules it may import (prefixes)
    "outputs": {"core"},
    "_batch": {"core", "outputs"},
    "cli": {"core", "outputs", "_batch"},
    "_widgets": {"core", "outputs", "_widgets"},
    "_sample_data": {"core"},
    "_writer": {"core"},
}


def _modules() -> dict[str, tuple[Path, bool]]:
    """``napari_unet.x.y`` name: (file, is a package)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def import_graph() -> dict[str, set[str]]:
    """The modules of the package each module imports (``from . import x``: the module x)."""
    modules = _modules()
    graph = {}
    for name, (path, package) in modules.items():
        here = name if package else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                subs = [f"{base}.{alias.name}" for alias in node.names]
                targets = [s for s in subs if s in modules] or [base]
            else:
                continue
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def _short(name: str) -> str:
    return name.removeprefix("napari_unet").removeprefix(".")


def test_no_import_cycle():
    assert _cycle(import_graph()) is None, " -> ".join(_cycle(import_graph()))


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_cli_imports_the_cli():
    importers = [m for m, deps in import_graph().items() if "napari_unet.cli" in deps]
    assert importers == []


def test_the_core_imports_only_the_core():
    wrong = {
        m: sorted(
            _short(d) for d in deps if not _short(d).startswith("core") and d != "napari_unet"
        )
        for m, deps in import_graph().items()
        if _short(m).startswith("core")
    }
    assert {m: d for m, d in wrong.items() if d} == {}


def _part(module: str) -> str | None:
    parts = _short(module).split(".")
    return parts[1] if parts[0] == "core" and len(parts) > 1 else None


def test_the_core_parts_import_only_those_below_them():
    assert set(PARTS) == {_part(m) for m in import_graph()} - {None}
    wrong = []
    for module, deps in import_graph().items():
        part = _part(module)
        for dep in deps:
            other = _part(dep)
            if part and other and other != part and other not in PARTS[part]:
                wrong.append(f"{_short(module)} -> {_short(dep)}")
    assert wrong == []


def test_the_layers_above_the_core_import_what_they_may():
    wrong = []
    for module, deps in import_graph().items():
        top = _short(module).split(".")[0]
        if top in ("", "core"):
            continue
        for dep in deps:
            target = _short(dep).split(".")[0]
            if target not in ("", top) and target not in LAYERS[top]:
                wrong.append(f"{_short(module)} -> {_short(dep)}")
    assert wrong == []


def test_widget_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "_widgets").glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > WIDGET_LINES} == {}


def test_instance_config_is_public():
    from napari_unet import InstanceConfig, to_instances

    assert InstanceConfig().threshold == to_instances.__defaults__[0]


def test_the_core_imports_without_dask():
    """Every core module but ``large.distributed`` imports with dask.distributed missing."""
    modules = sorted(m for m in import_graph() if _part(m) or _short(m) == "core")
    modules.remove("napari_unet.core.large.distributed")
    code = (
        "import sys\n"
        "for m in ('dask', 'distributed'):\n"
        "    sys.modules[m] = None  # importing it now fails\n"
        f"for m in {modules!r}:\n"
        "    __import__(m)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
