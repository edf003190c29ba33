"""nerfstudio integration: a "Harmonizer" toggle and a "harmonized" output in nerfstudio's viewer.

Install: ``pip install 'simharmony[nerfstudio]'`` (nerfstudio 1.1.5). Then

- new runs: ``ns-train splatfacto-harmonized --data DATA`` (registered through the
  ``nerfstudio.method_configs`` entry point; :mod:`.method`);
- existing splatfacto runs: ``simharmony ns-view --load-config outputs/.../config.yml [--model DIR]``
  loads the checkpoint with nerfstudio, attaches the harmonizer (:func:`.model.attach_harmonizer`) and
  starts nerfstudio's viewer. In the viewer: "Custom Elements" > "Harmonizer" (checkbox) and "Harmonizer
  strength"; choose "harmonized" under "Output type".

GPU: splatfacto renders and trains with gsplat's CUDA kernels. Without CUDA, the viewer renders through
this project's CPU rasterizer (slow: seconds per frame for large scenes; no training).
:class:`.outputs.HarmonizedOutputs` (no nerfstudio import) is the part that adds the output.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from simharmony.integrations.nerfstudio.outputs import HarmonizedOutputs


def _cmd_ns_view(args: argparse.Namespace) -> int:
    from pathlib import Path

    from simharmony.errors import BackendUnavailableError, MissingFileError

    try:
        from nerfstudio.scripts.viewer.run_viewer import _start_viewer
        from nerfstudio.utils.eval_utils import eval_setup

        from simharmony.integrations.nerfstudio.model import attach_harmonizer, deferred_lpips
    except ImportError as e:
        raise BackendUnavailableError(f"ns-view needs nerfstudio: pip install 'simharmony[nerfstudio]' ({e})") from e
    path = Path(args.load_config)
    if not path.is_file():
        raise MissingFileError(f"nerfstudio config not found: {path} (the config.yml of a splatfacto run)")
    with deferred_lpips():
        config, pipeline, _, step = eval_setup(path, test_mode="test")
    model = attach_harmonizer(pipeline.model, harmonizer=args.model, harmonizer_strength=args.strength,
                              harmonizer_enabled=not args.off)
    config.viewer.websocket_port = args.port
    config.vis = "viewer"
    print(f"simharmony ns-view: {path} (step {step}) on {model.device}; choose '{'harmonized'}' under Output type")
    if model.device.type != "cuda":
        print("note: no CUDA: frames render on the CPU rasterizer (slow)", file=sys.stderr)
    _start_viewer(config, pipeline, step)
    return 0


def add_cli(subparsers: Any) -> None:
    """``simharmony ns-view``: nerfstudio's viewer for an existing splatfacto run, with the Harmonizer."""
    p = subparsers.add_parser("ns-view", help="nerfstudio viewer for a splatfacto run with a Harmonizer toggle "
                                              "(needs the nerfstudio extra)")
    p.add_argument("--load-config", required=True, help="config.yml of a splatfacto (or splatfacto-harmonized) run")
    p.add_argument("--model", default="default",
                   help="enhancer folder, 'default' (weights/enhancer; untrained identity with a warning while "
                        "missing) or 'untrained'")
    p.add_argument("--strength", type=float, default=1.0, help="initial blend strength in [0, 1]")
    p.add_argument("--off", action="store_true", help="start with the Harmonizer checkbox off")
    p.add_argument("--port", type=int, default=7007, help="viewer websocket/http port")
    p.set_defaults(func=_cmd_ns_view)


__all__ = ["HarmonizedOutputs", "add_cli"]
