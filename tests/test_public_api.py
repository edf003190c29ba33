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
