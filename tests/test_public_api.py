"""The flat top-level API: ``from simharmony import Harmonizer, HarmonizedRenderer, Simulator`` works, and a
bare ``import simharmony`` stays light (no torch)."""

from __future__ import annotations

import subprocess
import sys

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


def test_no_import_cycles_at_module_level():
    """Data flows one way: no simharmony module imports (at top level) one that imports it back."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    graph: dict[str, set[str]] = {}
    for path in (root / "simharmony").rglob("*.py"):
        mod = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("simharmony"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("simharmony")}
        graph[mod] = deps
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
