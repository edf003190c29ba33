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
from pathlib import Path
from typing import Any

from simharmony_nerfstudio.outputs import HarmonizedOutputs


# Python tags a nerfstudio config.yml may carry (it is yaml.dump of dataclass configs): objects and class
# references of these modules only. nerfstudio reads the file with the unsafe yaml.Loader, which would call
# anything, for instance ``!!python/object/apply:os.system``.
_TRUSTED_CONFIG_MODULES = ("nerfstudio.", "simharmony.", "simharmony_nerfstudio.", "pathlib.", "torch.optim.", "torch.nn.")
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in
               ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "binary", "python/tuple",
                "python/none", "python/bool", "python/str", "python/int", "python/float", "python/list", "python/dict")}


def _trusted_tag(tag: str) -> bool:
    prefix = "tag:yaml.org,2002:python/"
    if tag in _PLAIN_TAGS:
        return True
    if not tag.startswith(prefix):
        return False
    kind, _, target = tag[len(prefix):].partition(":")
    return kind in ("object", "object/new", "object/apply", "name", "module") and target.startswith(_TRUSTED_CONFIG_MODULES)


def check_config_tags(path: Any) -> None:
    """Read a nerfstudio ``config.yml`` as a YAML node graph (nothing is constructed, nothing imported) and
    raise ConfigError if any tag would construct or call something outside :data:`_TRUSTED_CONFIG_MODULES`."""
    import yaml

    from simharmony.errors import ConfigError

    try:
        root = yaml.compose(Path(path).read_text(), Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    stack, seen = [root] if root is not None else [], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if not _trusted_tag(node.tag):
            raise ConfigError(f"{path}: refusing YAML tag {node.tag!r} at line {node.start_mark.line + 1}: a "
                              f"nerfstudio config may only construct objects of {', '.join(_TRUSTED_CONFIG_MODULES)}")
        if isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _cmd_ns_view(args: argparse.Namespace) -> int:
    from simharmony.errors import BackendUnavailableError, MissingFileError

    path = Path(args.load_config)
    if not path.is_file():
        raise MissingFileError(f"nerfstudio config not found: {path} (the config.yml of a splatfacto run)")
    check_config_tags(path)  # before nerfstudio's eval_setup reads it with yaml.Loader
    try:
        from nerfstudio.scripts.viewer.run_viewer import _start_viewer
        from nerfstudio.utils.eval_utils import eval_setup

        from simharmony_nerfstudio.model import attach_harmonizer, deferred_lpips
    except ImportError as e:
        raise BackendUnavailableError(f"ns-view needs nerfstudio: pip install 'simharmony[nerfstudio]' ({e})") from e
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
    from simharmony.utils.checks import arg_float, arg_int

    p = subparsers.add_parser("ns-view", help="nerfstudio viewer for a splatfacto run with a Harmonizer toggle "
                                              "(needs the nerfstudio extra)")
    p.add_argument("--load-config", required=True, help="config.yml of a splatfacto (or splatfacto-harmonized) run")
    p.add_argument("--model", default="default",
                   help="enhancer folder, 'default' (weights/enhancer; untrained identity with a warning while "
                        "missing) or 'untrained'")
    p.add_argument("--strength", type=arg_float(0, 1), default=1.0, help="initial blend strength in [0, 1]")
    p.add_argument("--off", action="store_true", help="start with the Harmonizer checkbox off")
    p.add_argument("--port", type=arg_int(1, 65535), default=7007, help="viewer websocket/http port")
    p.set_defaults(func=_cmd_ns_view)


__all__ = ["HarmonizedOutputs", "add_cli"]
