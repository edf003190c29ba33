"""The ``simharmony`` command line.

    simharmony demo                     render the shipped demo street (README main job)
    simharmony build-demo-scene         rebuild weights/demo_street from scratch (Mitsuba + reconstruction)
    simharmony render-street            render a procedural Mitsuba street to a frames folder
    simharmony capture                  poses for a video or photos by structure from motion (COLMAP)
    simharmony reconstruct              train 3DGS on street frames, a capture, transforms.json or a COLMAP model
    simharmony assets                   list / query an asset bank
    simharmony data generate|report|contact-sheet   paired training data (presets tiny/default/recon_extra/relight_street/holdout)
    simharmony simulate                 drive the demo street through the render hook: raw | harmonized video
    simharmony bench --preset smoke|full   metrics, baselines, scenarios, speed -> report folder
    simharmony bench-capture            the real-capture scenario: a real video to held-out PSNR/SSIM and a shifted lane
    simharmony train                    train the enhancer (YAML config; resumable; torchrun for data-parallel)
    simharmony view                     viser viewer: harmonizer toggle, asset picker, lateral shift
    simharmony ns-view                  nerfstudio viewer with the Harmonizer toggle on an existing splatfacto run
    simharmony train-parametric         train the parametric curves + shading baseline
    simharmony convert-diffusers        local diffusers UNet (+ VAE) -> single-step temporal enhancer
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import logging
import sys
import time
from pathlib import Path

from simharmony.errors import ConfigError, SimHarmonyError
from simharmony.paths import DEMO_ASSETS_DIR, DEMO_SCENE_DIR


def _cmd_demo(args: argparse.Namespace) -> int:
    from simharmony.demo import run_demo

    model = None if args.model == "none" else args.model
    result = run_demo(args.scene, args.out, lateral_shift_m=args.shift, num_frames=args.frames, progress=not args.quiet,
                      harmonizer=model)
    enh = f", median enhance {result.median_enhance_ms:.0f} ms/frame" if result.median_enhance_ms is not None else ""
    print(f"demo: {result.num_frames} frames at {result.width}x{result.height}, "
          f"median render {result.median_render_ms:.0f} ms/frame{enh}, inserted vehicle on "
          f"{100 * result.inserted_pixel_fraction:.1f}% of pixels")
    print(f"enhancer: {result.model}")
    print(f"wrote {result.video} and {result.contact_sheet}")
    return 0


def _cmd_build_demo(args: argparse.Namespace) -> int:
    from scene_tools.demo_scene import DemoSceneConfig, build_demo_scene

    cfg = DemoSceneConfig.load(args.config) if args.config else DemoSceneConfig()
    if args.iterations is not None:
        cfg.reconstruction.iterations = args.iterations
    scene, result, asset = build_demo_scene(args.out, cfg, work_dir=args.work_dir, bank_dir=args.bank)
    print(f"demo scene: {len(scene.background)} Gaussians, held-out PSNR {result.heldout_psnr:.2f} dB, "
          f"train PSNR {result.train_psnr:.2f} dB, {result.seconds / 60:.1f} min; inserted asset {asset.id}")
    return 0


def _cmd_render_street(args: argparse.Namespace) -> int:
    from scene_tools.pbr import render_street
    from scene_tools.street import StreetConfig, generate_street

    cfg = StreetConfig.load(args.config) if args.config else StreetConfig(seed=args.seed)
    layout = generate_street(cfg)
    traj = layout.trajectory.shifted_laterally(args.shift) if args.shift else None
    frames = render_street(layout, trajectory=traj, spp=args.spp)
    frames.save(args.out)
    print(f"wrote {len(frames.trajectory)} frames to {args.out}")
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from scene_tools.loaders import load_posed_images
    from scene_tools.reconstruct import ReconstructionConfig, reconstruct

    cfg = ReconstructionConfig.load(args.config) if args.config else ReconstructionConfig()
    if args.iterations is not None:
        cfg.iterations = args.iterations
    images = load_posed_images(args.data, args.downscale, args.max_views)
    cameras = len(images.trajectory.camera_groups())
    init = "sparse points" if images.points is not None and cfg.init in ("auto", "points") else cfg.init
    print(f"reconstruct: {len(images)} views at {images.width}x{images.height}"
          f"{f' from a {cameras}-camera rig' if cameras > 1 else ''}; initialisation: {init}")
    result = reconstruct(images, cfg, output_dir=args.out)
    held = "n/a" if result.heldout_psnr is None else f"{result.heldout_psnr:.2f} dB"
    print(f"{len(result.scene)} Gaussians; train PSNR {result.train_psnr:.2f} dB; held-out PSNR {held}; "
          f"{result.seconds / 60:.1f} min; scene at {args.out}/scene.safetensors")
    return 0


def _cmd_capture(args: argparse.Namespace) -> int:
    from scene_tools.capture import CaptureConfig, capture

    cfg = CaptureConfig.load(args.config) if args.config else CaptureConfig()
    over = {k: getattr(args, k) for k in ("matching", "camera_model", "video_every", "video_max_frames",
                                          "video_max_size") if getattr(args, k) is not None}
    cfg = CaptureConfig.from_dict({**cfg.to_dict(), **over})  # validates the overrides too
    res = capture(args.source, args.out, cfg, progress=not args.quiet)
    print(f"capture: {res.num_registered} of {res.num_images} images registered ({100 * res.registered_fraction:.0f}%), "
          f"{res.num_points} sparse points, {sum(res.seconds.values()) / 60:.1f} min; model at {res.model_dir}")
    if res.unregistered:
        shown = ", ".join(res.unregistered[:8]) + (" ..." if len(res.unregistered) > 8 else "")
        print(f"not registered: {shown}")
    print(f"next: simharmony reconstruct --data {args.out} --out RUN_DIR --downscale 2")
    return 0


def _cmd_assets(args: argparse.Namespace) -> int:
    from scene_tools.assets import AssetBank

    bank = AssetBank(args.bank, create=False)
    infos = bank.query(category=args.category)
    for info in infos:
        print(json.dumps({"id": info.id, "category": info.category, "size": list(info.size),
                          "source": info.source_scene, "gaussians": info.num_gaussians}))
    if not infos:
        print("no assets match", file=sys.stderr)
    return 0


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard i/n needs n >= 1 and 0 <= i < n, got {text!r}")
    return i, n


def _cmd_data_generate(args: argparse.Namespace) -> int:
    from simharmony.data.presets import generate_preset, get_preset
    from simharmony.data.shards import stream_seconds

    preset = get_preset(args.preset)
    if args.cache_dir is not None:
        preset.cache_dir = args.cache_dir
    if args.real_source:
        from simharmony.data.real import RealSource

        preset.real_sources = [RealSource(path=p, licence=args.real_licence) for p in args.real_source]
    if args.seed is not None:  # the same recipe, other items: a development split
        preset.name, preset.seed = f"{preset.name}_seed{args.seed}", args.seed
    if args.items:
        counts = {}
        for entry in args.items:
            stream, _, n = entry.partition("=")
            if stream not in preset.streams or not n.isdigit():
                raise ConfigError(f"--items takes STREAM=COUNT for a stream of preset {args.preset!r} "
                                  f"({', '.join(preset.streams)}), got {entry!r}")
            counts[stream] = int(n)
        preset.streams = counts
    started = time.perf_counter()
    record = generate_preset(preset, args.out, shard=_parse_shard(args.shard), progress=not args.quiet,
                             workers=args.workers)
    print(f"data {preset.name}: {record['num_items']} items in {args.out} (version {record['version'][:12]}, "
          f"{'complete' if record['complete'] else 'missing ' + str(len(record['missing_shards'])) + ' shards'}); "
          f"this run {(time.perf_counter() - started) / 60:.1f} min wall; process minutes per stream:")
    for name, t in stream_seconds(args.out).items():
        print(f"  {name:<11} {int(t['items']):6d} items {t['seconds'] / 60:8.1f} min")
    return 0


def _cmd_data_report(args: argparse.Namespace) -> int:
    from simharmony.data.shards import iter_items, stream_seconds
    from simharmony.data.streams import format_report, stream_report
    from simharmony.utils.io import load_yaml

    info = load_yaml(Path(args.dir) / "dataset.yaml") if (Path(args.dir) / "dataset.yaml").is_file() else {}
    report = stream_report(iter_items(args.dir))  # raises MissingFileError / CorruptFileError on bad folders
    print(f"dataset {args.dir}: {info.get('num_items')} items, version {info.get('version')}, "
          f"complete={info.get('complete')}")
    print(format_report(report))
    seconds = stream_seconds(args.dir)
    if seconds:
        print("generation time: " + ", ".join(f"{k} {v['seconds'] / 60:.1f} min" for k, v in seconds.items()))
    if args.json:
        print(json.dumps({"info": {k: info.get(k) for k in ("version", "num_items", "complete")}, "report": report,
                          "seconds": seconds}, indent=1))
    return 0


def _cmd_data_contact_sheet(args: argparse.Namespace) -> int:
    from simharmony.data.shards import ShardDataset
    from simharmony.visualize import contact_sheet, save_png, side_by_side

    ds = ShardDataset(args.dir)
    rows = []
    for stream in sorted(ds.streams_of(ds.records)):
        picked = [i for i, r in enumerate(ds.records) if r["stream"] == stream][: args.per_stream]
        for i in picked:
            it = ds.load_item(i)
            t = it.num_frames // 2  # a sequence shows its middle frame
            rows.append(side_by_side([it.input[t], it.target[t], it.mask[t]],
                                     [f"{stream} input", "target", "mask"]))
    save_png(args.out, contact_sheet(rows, max_rows=len(rows)))
    print(f"wrote {args.out}: {len(rows)} rows (input | target | mask)")
    return 0


# modules with an ``add_cli(subparsers)`` adding their own subcommand
FEATURE_CLIS = (
    "simharmony.models.diffusers_path",
    "simharmony.sim",
    "simharmony.bench",
    "simharmony.bench.real_capture",
    "simharmony.parametric_training",
    "simharmony.training.trainer",
    "simharmony.training.codec_trainer",
    "simharmony.utils.convert_weights",
    "simharmony.utils.convert_fid_inception",
)


def build_parser() -> argparse.ArgumentParser:
    from simharmony.utils.checks import arg_float, arg_int

    p = argparse.ArgumentParser(prog="simharmony", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="render the shipped demo street with its inserted vehicle")
    d.add_argument("--scene", default=str(DEMO_SCENE_DIR), help="scene folder (default: shipped demo)")
    d.add_argument("--out", default="outputs/demo", help="output folder")
    d.add_argument("--shift", type=arg_float(), default=0.0, help="lateral shift of the ego trajectory in metres (+ = left)")
    d.add_argument("--frames", type=arg_int(1), default=None, help="render only the first N frames")
    d.add_argument("--model", default="default", help="enhancer: 'default' (weights/enhancer), a folder saved by "
                   "Enhancer.save_pretrained, 'untrained' (identity) or 'none' (raw render only)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_demo)

    b = sub.add_parser("build-demo-scene", help="rebuild the demo scene: Mitsuba street -> 3DGS -> vehicle asset -> insertion")
    b.add_argument("--out", default=str(DEMO_SCENE_DIR))
    b.add_argument("--bank", default=str(DEMO_ASSETS_DIR))
    b.add_argument("--work-dir", default="data/demo_build", help="cache for renders and checkpoints (resumable)")
    b.add_argument("--config", default=None, help="DemoSceneConfig YAML")
    b.add_argument("--iterations", type=arg_int(1), default=None)
    b.set_defaults(func=_cmd_build_demo)

    r = sub.add_parser("render-street", help="render a procedural street with Mitsuba")
    r.add_argument("--out", required=True)
    r.add_argument("--config", default=None, help="StreetConfig YAML")
    r.add_argument("--seed", type=arg_int(0), default=0)
    r.add_argument("--spp", type=arg_int(1), default=None)
    r.add_argument("--shift", type=arg_float(), default=0.0, help="lateral shift of the ego trajectory in metres")
    r.set_defaults(func=_cmd_render_street)

    c = sub.add_parser("reconstruct", help="train 3DGS on street frames, a capture folder, transforms.json or a COLMAP model")
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--config", default=None, help="ReconstructionConfig YAML")
    c.add_argument("--iterations", type=arg_int(1), default=None)
    c.add_argument("--downscale", type=arg_int(1), default=1, help="divide the image size by this integer on load")
    c.add_argument("--max-views", type=arg_int(1), default=None, help="use at most this many views, evenly spread")
    c.set_defaults(func=_cmd_reconstruct)

    cp = sub.add_parser("capture", help="poses, lens and sparse points for a video or a folder of photos "
                                        "(structure from motion with COLMAP)")
    cp.add_argument("source", help="a video file or a folder of images")
    cp.add_argument("--out", required=True, help="new folder for the frames, COLMAP model and capture.json")
    cp.add_argument("--config", default=None, help="CaptureConfig YAML")
    cp.add_argument("--matching", choices=["auto", "sequential", "exhaustive"], default=None)
    cp.add_argument("--camera-model", default=None, help="COLMAP lens model to solve (default SIMPLE_PINHOLE; "
                    "SIMPLE_RADIAL or OPENCV for visibly distorted footage)")
    cp.add_argument("--every", dest="video_every", type=arg_int(1), default=None, help="video: keep every n-th frame")
    cp.add_argument("--max-frames", dest="video_max_frames", type=arg_int(1), default=None, help="video: at most this many")
    cp.add_argument("--max-size", dest="video_max_size", type=arg_int(16), default=None,
                    help="video: longest side of the extracted frames, pixels")
    cp.add_argument("--quiet", action="store_true")
    cp.set_defaults(func=_cmd_capture)

    a = sub.add_parser("assets", help="list assets in a bank")
    a.add_argument("--bank", default=str(DEMO_ASSETS_DIR))
    a.add_argument("--category", default=None)
    a.set_defaults(func=_cmd_assets)

    dt = sub.add_parser("data", help="paired training data: generate presets, report PSNR in masks, contact sheet")
    dsub = dt.add_subparsers(dest="data_command", required=True)
    g = dsub.add_parser("generate", help="generate (or resume) a preset's shards")
    g.add_argument("--preset", default="tiny", help="tiny, default, holdout, recon_extra, relight_street, real or real_objects")
    g.add_argument("--out", required=True, help="dataset folder")
    g.add_argument("--shard", default="0/1", help="i/n: make only this machine's share of the shards")
    g.add_argument("--workers", type=arg_int(1), default=1,
                   help="chunks generated at once in separate processes, cores split between them (2 on 2 cores: "
                        "about 1.2x faster than 1; same items)")
    g.add_argument("--cache-dir", default=None, help="reconstruction cache (default $SIMHARMONY_RECON_CACHE or data/cache/recon)")
    g.add_argument("--real-source", action="append", default=None, metavar="PATH",
                   help="the real streams' images: a folder of photos or video frames, or a video (repeatable; "
                        "default: the Udacity clip without its last 60 frames and the Debian photographs)")
    g.add_argument("--real-licence", default="", help="licence recorded for --real-source images")
    g.add_argument("--seed", type=int, default=None, help="another dataset seed: the preset's recipe, other items")
    g.add_argument("--items", nargs="+", default=None, metavar="STREAM=COUNT",
                   help="make only these streams, this many items each (e.g. real_isp=100)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_data_generate)
    rp = dsub.add_parser("report", help="PSNR(input, target) inside the mask per stream, and generation times")
    rp.add_argument("dir")
    rp.add_argument("--json", action="store_true", help="also print the report as JSON")
    rp.set_defaults(func=_cmd_data_report)
    cs = dsub.add_parser("contact-sheet", help="PNG grid of input | target | mask per stream")
    cs.add_argument("dir")
    cs.add_argument("--out", required=True, help="PNG path")
    cs.add_argument("--per-stream", type=arg_int(1), default=2, help="items shown per stream")
    cs.set_defaults(func=_cmd_data_contact_sheet)

    for module in FEATURE_CLIS:  # subcommands defined beside their feature
        importlib.import_module(module).add_cli(sub)
    for entry in sorted(importlib.metadata.entry_points(group="simharmony.cli"), key=lambda e: e.name):
        entry.load()(sub)  # the plugins' subcommands (view, ns-view), found through their entry points
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SimHarmonyError as e:
        print(f"simharmony {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the system's refusal (an unwritable --out, a full disk): one line, not a traceback
        print(f"simharmony {args.command}: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"simharmony {args.command}: interrupted (work already saved is kept; resumable commands resume "
              "when run again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
