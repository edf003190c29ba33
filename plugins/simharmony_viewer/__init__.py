"""Standalone viser viewer for simharmony scenes: harmonizer toggle, asset picker + insert, lateral shift.

    simharmony view [--scene weights/demo_street] [--assets weights/demo_assets] [--model DIR] [--port 8080]

``ViewerApp`` (app.py) holds the logic and is driven directly by tests; ``ViewerServer`` (server.py) wires it
to viser (0.2.7, as pinned by nerfstudio 1.1.5, or newer). viser is an optional dependency: the ``viewer``
extra.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from simharmony.paths import DEMO_ASSETS_DIR, DEMO_SCENE_DIR
from simharmony_viewer.app import ViewerApp, ViewerConfig, ViewerFrame


def _cmd_view(args: argparse.Namespace) -> int:
    from simharmony_viewer.server import check_port, serve

    check_port(args.host, args.port)  # a bad or taken port: a one-line error (exit 2) before loading anything
    model = None if args.model in ("none", "") else args.model
    app = ViewerApp.from_paths(args.scene, None if args.assets in ("none", "") else args.assets, model,
                               config=ViewerConfig(scale=args.scale), device=args.device,
                               trajectory_from=args.trajectory, ground_camera_height_m=args.ground_height)
    if args.harmonize and app.has_harmonizer:
        app.set_harmonize(True)
    if app.warning:
        print(f"warning: {app.warning}", file=sys.stderr)
    serve(app, host=args.host, port=args.port, camera=args.camera)
    return 0


def add_cli(subparsers: Any) -> None:
    """``simharmony view``: serve the viewer on http://HOST:PORT."""
    from simharmony.utils.checks import arg_float, arg_int

    p = subparsers.add_parser("view", help="interactive viser viewer: harmonizer toggle, asset insertion, lateral shift")
    p.add_argument("--scene", default=str(DEMO_SCENE_DIR),
                   help="a scene folder (Scene.save), a reconstruction folder (simharmony reconstruct --out) or a "
                        "3DGS .ply")
    p.add_argument("--trajectory", default=None,
                   help="the recorded path to snap to: a capture folder, transforms.json, COLMAP model or street "
                        "frames (default: the scene's own, else a straight line through it)")
    p.add_argument("--ground-height", type=arg_float(0, exclusive_minimum=True), default=None, metavar="M",
                   help="move --trajectory into the street frame with this camera height, as bench-capture does")
    p.add_argument("--camera", choices=("free", "trajectory"), default="free",
                   help="initial camera: free (mouse) or snapped to the recorded trajectory")
    p.add_argument("--assets", default=str(DEMO_ASSETS_DIR), help="asset bank folder ('none' for no bank)")
    p.add_argument("--model", default="default",
                   help="'default' (weights/enhancer; an untrained identity Enhancer with a warning while missing), "
                        "'untrained', 'none', or a folder saved with Enhancer.save_pretrained")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    p.add_argument("--port", type=arg_int(1, 65535), default=8080, help="port to listen on (1..65535, must be free)")
    p.add_argument("--scale", type=arg_float(0, exclusive_minimum=True), default=1.0, help="camera resolution factor (demo: 1.0 = 256x144)")
    p.add_argument("--device", default="cpu", help="torch device of the scene and enhancer")
    p.add_argument("--harmonize", action="store_true", help="start with the harmonizer on")
    p.set_defaults(func=_cmd_view)


__all__ = ["ViewerApp", "ViewerConfig", "ViewerFrame", "add_cli"]
