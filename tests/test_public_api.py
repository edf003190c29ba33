"""The flat top-level API: ``from simharmony import Harmonizer, HarmonizedRenderer, Simulator`` works, and a
bare ``import simharmony`` stays light (no torch)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest


def test_import_simharmony_does_not_import_torch():
    code = "import sys, simharmony; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_public_names_resolve_to_their_modules():
    import simharmony
    from simharmony.harmonizer import Harmonizer
    from simharmony.plugin import HarmonizedRenderer
    from simharmony.sim import Simulator

    assert simharmony.Harmonizer is Harmonizer
    assert simharmony.HarmonizedRenderer is HarmonizedRenderer and simharmony.Simulator is Simulator
    for name in simharmony.__all__:
        assert getattr(simharmony, name) is not None
    assert set(simharmony.__all__) <= set(dir(simharmony))


def test_unknown_attribute_is_an_attribute_error():
    import simharmony

    with pytest.raises(AttributeError, match="no attribute 'Harmoniser'"):
        simharmony.Harmoniser  # noqa: B018


ROOT = Path(__file__).resolve().parents[1]
CORE = ("simharmony", "scene_tools")
PLUGINS = tuple(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").is_file())


def _module_files() -> dict[str, Path]:
    """module name -> file, for the core packages and every plugin package under plugins/."""
    files = {}
    for base, names in ((ROOT, CORE), (ROOT / "plugins", PLUGINS)):
        for name in names:
            for path in (base / name).rglob("*.py"):
                files[".".join(path.relative_to(base).with_suffix("").parts).removesuffix(".__init__")] = path
    return files


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    deps = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            deps.add(node.module)
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names}
    return {d for d in deps if d.split(".")[0] in CORE + PLUGINS}


def test_plugins_folder_holds_installable_plugin_packages_not_a_plugins_package():
    assert not (ROOT / "plugins" / "__init__.py").exists()
    assert {"simharmony_viewer", "simharmony_nerfstudio", "simharmony_gsplat"} <= set(PLUGINS)
    # installed: importable from anywhere, while the folder name `plugins` is not (run outside the checkout)
    code = f"import importlib.util as u; print([u.find_spec(n) is not None for n in {[*PLUGINS, 'plugins']!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent).stdout.strip()
    assert out == str([True] * len(PLUGINS) + [False])


def test_core_never_imports_a_plugin():
    """Data flows one way: the plugins build on the core; the core finds their CLI through entry points."""
    for mod, path in _module_files().items():
        if mod.split(".")[0] in CORE:
            bad = {d for d in _imports(path, top_level_only=False) if d.split(".")[0] in PLUGINS}
            assert not bad, f"{mod} imports the plugin(s) {sorted(bad)}"


def test_no_import_cycles_at_module_level():
    """No module of the core or the plugins imports (at top level) one that imports it back."""
    graph = {mod: _imports(path, top_level_only=True) for mod, path in _module_files().items()}
    done: set[str] = set()

    def visit(mod: str, stack: tuple[str, ...]) -> None:
        assert mod not in stack, f"import cycle: {' -> '.join(stack[stack.index(mod):] + (mod,))}"
        if mod in done:
            return
        for dep in graph.get(mod, ()):
            visit(dep, stack + (mod,))
        done.add(mod)

    for mod in graph:
        visit(mod, ())
