"""Real imagery for the enhancer (DESIGN.md section 5, "Real imagery"): a corpus of real photos and video
frames, and the paired streams made from them.

The synthetic streams teach what procedural streets look like; a model trained on them alone darkens and
streaks real frames that were right. These streams show it real pixels, and real pixels that must stay:

- ``real_isp``: region appearance mismatch. A real view is linearised with the sRGB curve, sent through a
  random software ISP (:mod:`simharmony.data.isp`: exposure, white balance, tone curve, contrast,
  saturation, black level, noise) and blended back inside a soft mask shaped like an object or an organic
  blob: ``I_mix = M * I_isp + (1 - M) * I``; target ``I``.
- ``real_rpb``: Random Poisson Blending (region-to-region-r2r) on real views: the masked region is
  Poisson-blended onto a random place of another real view, mixed by ``alpha`` and pasted back.
- ``real_identity``: input = target (a real view), with a mask of an already right "object" or with an
  empty mask: the enhancer must leave right pixels alone.
- ``real_video``: ``seq_len`` consecutive frames of a real video (the same crop on every frame); with
  probability ``flicker_prob`` the input gets per-frame exposure / white-balance flicker
  (:mod:`simharmony.data.flicker`, frame 0 clean), otherwise input = target (clean real video). Flow and
  occlusion come from OpenCV DIS flow with a forward-backward check (:func:`dis_flow`): real video has no
  geometry.

The mask means one thing in every stream, synthetic and real: **the inserted object, as a simulator gives
it** (soft edges allowed). Here the "inserted object" is the region whose appearance was changed (or, on
identity items, a region that was inserted already right); items without one have an all-zero mask, which
says "nothing was inserted in this frame". Real items have no depth: their ``depth`` is all ``inf`` and
``metadata["has_depth"]`` is False; training never gives a model that depth (``TrainConfig.depthless_streams``).

Every real view is a random crop of a source image with the output's aspect ratio, covering
``view_fraction`` of the largest such crop, resized to ``width`` x ``height``: small fractions show the
model real detail at the pixel scale of 512- to 1024-wide frames, large ones the whole scene. Each item's
metadata records its source (path, name, licence) and crop.

The corpus (:class:`RealCorpus`) is a list of :class:`RealSource` (a folder of photos, a folder of video
frames, a video file, or one image). :func:`default_corpus` is the shipped default's training corpus:
``../shared/realdata/udacity_highway`` without its last :data:`UDACITY_HOLDOUT_FRAMES` frames (the clean-video
holdout) and photographs from Debian wallpaper packages (:data:`DEBIAN_PHOTOS`); :func:`objects_corpus` adds
close-ups of objects (:data:`LOMIRI_PHOTOS`). Folders that the realdata
README marks "eval only", and scikit-image's photos, are refused for training (:data:`EVAL_ONLY_NAMES`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from scene_tools.capture import IMAGE_SUFFIXES, VIDEO_SUFFIXES, fit_max_side, iter_video_frames, list_images
from simharmony.data.flicker import FlickerConfig, apply_flicker, flicker_gains
from simharmony.data.isp import IspParams, IspRanges, apply_isp, sample_isp_params
from simharmony.data.item import PairItem
from simharmony.data.streams import _box, poisson_blend_foreground, soft_mask
from simharmony.errors import ConfigError, FileFormatError, InvalidInputError, MissingFileError
from simharmony.utils.config import Config, all_finite, require

# realdata folders whose licence allows evaluation only, and scikit-image's reserved photos: never trained on
EVAL_ONLY_NAMES = ("ddad_test_scene", "real_composites_tsai", "real_object_masks", "sacre_coeur_photos", "skimage")
UDACITY_FRAMES = 221
UDACITY_HOLDOUT_FRAMES = 60  # the last 60 frames of the clip: the clean-real-video holdout
MAX_SOURCE_SIDE = 1920  # sources are downscaled to this on load (a 4K wallpaper costs 12x the decode otherwise)


def realdata_dir() -> Path:
    """``$SIMHARMONY_REALDATA``, else ``../shared/realdata`` beside the repository."""
    from simharmony.paths import REPO_ROOT

    env = os.environ.get("SIMHARMONY_REALDATA", "")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "realdata"


# --------------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------------


@dataclass
class RealSource(Config):
    """One source of real images.

    - ``path``: a folder of images (sorted by name), a video file, or one image file
    - ``kind``: "photos" (unordered stills) or "video" (consecutive frames: a video file or a folder of
      frames; sequences are cut from it); "auto" = "video" for a video file, else "photos"
    - ``start`` / ``stop``: the frames (or sorted files) [start, stop) used; ``stop`` 0 = to the end
    - ``weight``: relative probability of drawing an image from this source
    - ``name``, ``licence``: recorded in every item's metadata ("" = the file name / "unknown")
    """

    path: str = ""
    kind: str = "auto"
    start: int = 0
    stop: int = 0
    weight: float = 1.0
    name: str = ""
    licence: str = ""

    def __post_init__(self) -> None:
        o = "RealSource"
        require(isinstance(self.path, str) and bool(self.path), o, "path must name a folder, a video or an image")
        require(self.kind in ("auto", "photos", "video"), o, f"kind={self.kind!r} must be 'auto', 'photos' or 'video'")
        require(self.start >= 0 and self.stop >= 0 and (self.stop == 0 or self.stop > self.start), o,
                f"start={self.start}, stop={self.stop}: need 0 <= start < stop (stop 0 = to the end)")
        require(all_finite(self.weight) and self.weight > 0, o, f"weight={self.weight!r} must be > 0")

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name

    @property
    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        return "video" if Path(self.path).suffix.lower() in VIDEO_SUFFIXES else "photos"


@dataclass
class RealCorpus(Config):
    """Real images the real streams draw from: ``sources`` (empty = :func:`default_corpus`);
    ``allow_eval_only`` lets a corpus name folders reserved for evaluation (only evaluation sets do)."""

    sources: list[RealSource] = field(default_factory=list)
    allow_eval_only: bool = False

    def resolved(self) -> list[RealSource]:
        """The sources, the default corpus if none are given; ConfigError on an eval-only folder."""
        sources = self.sources or default_corpus().sources
        if not self.allow_eval_only:
            for s in sources:
                parts = {p.lower() for p in Path(s.path).parts}
                bad = [n for n in EVAL_ONLY_NAMES if n in parts]
                if bad:
                    raise ConfigError(f"RealCorpus: {s.path} is reserved for evaluation ({bad[0]}: see "
                                      "../shared/realdata/README.md); it must not be trained on")
        return sources


# The photographs among the Debian wallpaper packages (each looked at: a photograph of a real scene, not a
# render, drawing or blur; gnome-backgrounds and ukui-wallpapers hold none). Licences from
# /usr/share/doc/<package>/copyright. Install: apt-get install mate-backgrounds plasma-workspace-wallpapers.
DEBIAN_PHOTOS: tuple[tuple[str, str, str], ...] = (  # (path, package, licence)
    ("/usr/share/backgrounds/mate/nature/Aqua.jpg", "mate-backgrounds", "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Blinds.jpg", "mate-backgrounds", "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Dune.jpg", "mate-backgrounds", "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/FreshFlower.jpg", "mate-backgrounds", "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Garden.jpg", "mate-backgrounds", "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/GreenMeadow.jpg", "mate-backgrounds", "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/LadyBird.jpg", "mate-backgrounds", "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/RainDrops.jpg", "mate-backgrounds", "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Storm.jpg", "mate-backgrounds", "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/TwoWings.jpg", "mate-backgrounds", "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/Wood.jpg", "mate-backgrounds", "GPL-2+"),
    ("/usr/share/backgrounds/mate/nature/YellowFlower.jpg", "mate-backgrounds", "GPL-2+"),
    ("/usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg", "plasma-workspace-wallpapers", "GPL-2+ (Debian copyright; upstream metadata.json: LGPL-3)"),
    ("/usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg", "plasma-workspace-wallpapers", "GPL-2+ (Debian copyright; upstream metadata.json: LGPL-3)"),
    ("/usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg", "plasma-workspace-wallpapers", "GPL-2+ (Debian copyright; upstream metadata.json: LGPL-3)"),
    ("/usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg", "plasma-workspace-wallpapers", "GPL-2+ (Debian copyright; upstream metadata.json: LGPL-3)"),
    ("/usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg", "plasma-workspace-wallpapers", "GPL-2+ (Debian copyright; upstream metadata.json: LGPL-3)"),
    ("/usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg", "plasma-workspace-wallpapers", "GPL-2+ (Debian copyright; upstream metadata.json: LGPL-3)"),
    ("/usr/share/wallpapers/Grey/contents/images/2560x1600.jpg", "plasma-workspace-wallpapers", "GPL-2+ (Debian copyright; upstream metadata.json: LGPL-3)"),
    ("/usr/share/wallpapers/Kite/contents/images/2560x1600.jpg", "plasma-workspace-wallpapers", "GPL-2+ (Debian copyright; upstream metadata.json: LGPL-3)"),
    ("/usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg", "plasma-workspace-wallpapers", "GPL-2+ (Debian copyright; upstream metadata.json: LGPL-3)"),
    ("/usr/share/wallpapers/Path/contents/images/2560x1600.jpg", "plasma-workspace-wallpapers", "GPL-2+ (Debian copyright; upstream metadata.json: LGPL-3)"),
    ("/usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg", "plasma-workspace-wallpapers", "GPL-2+ (Debian copyright; upstream metadata.json: LGPL-3)"),
)
# close-up and object photographs (Ubuntu Touch wallpaper contests), per-file licences from the packages'
# copyright files; their illustrations (Fossa, Infinite-Sea, Painting-Colors, umang, analogpattern) are left out
LOMIRI_PHOTOS: tuple[tuple[str, str, str], ...] = tuple(
    (f"/usr/share/backgrounds/{name}", pkg, lic) for name, pkg, lic in (
        ("Bridge_by_Sander_Klootwijk.jpg", "lomiri-wallpapers-16.04", "CC-BY-SA-4.0"),
        ("Dragonfly_by_Bolly.jpg", "lomiri-wallpapers-16.04", "CC-BY-SA-4.0"),
        ("Picture_0B_by_freespace.jpg", "lomiri-wallpapers-16.04", "CC-BY-4.0"),
        ("Picture_1A_by_freespace.jpg", "lomiri-wallpapers-16.04", "CC-BY-4.0"),
        ("Wine_by_Jakkub_Mede.jpg", "lomiri-wallpapers-16.04", "CC-BY-4.0"),
        ("aitzgorri_by_Aitzol_Berasategi.jpg", "lomiri-wallpapers-16.04", "CC-BY-4.0"),
        ("free_by_Peter_Nerlich.jpg", "lomiri-wallpapers-16.04", "CC-BY-SA-4.0"),
        ("friends_by_Aitzol_Berasategi.jpg", "lomiri-wallpapers-16.04", "CC-BY-4.0"),
        ("greentock_by_Peter_Nerlich.jpg", "lomiri-wallpapers-16.04", "CC-BY-SA-4.0"),
        ("life_by_Aitzol_Berasategi.jpg", "lomiri-wallpapers-16.04", "CC-BY-4.0"),
        ("picosdeeuropa_by_Aitzol_Berasategi.jpg", "lomiri-wallpapers-16.04", "CC-BY-4.0"),
        ("seeding_by_Clements_Engelhardt.jpg", "lomiri-wallpapers-16.04", "CC0-1.0"),
        ("sunset_by_Aitzol_Berasategi.jpg", "lomiri-wallpapers-16.04", "CC-BY-4.0"),
        ("Kleiber_by_Lukas_Baubkus.jpg", "lomiri-wallpapers-20.04", "CC-BY-SA-3.0"),
    ))
DEBIAN_PACKAGES = ("mate-backgrounds", "plasma-workspace-wallpapers", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")


def _photo_sources(photos: tuple[tuple[str, str, str], ...], weight: float) -> list[RealSource]:
    return [RealSource(path=p, kind="photos", weight=weight / len(photos), name=f"{pkg}:{Path(p).name}", licence=lic)
            for p, pkg, lic in photos]


def default_corpus(photos_weight: float = 0.5) -> RealCorpus:
    """The shipped default's training corpus: the Udacity highway clip without its last
    :data:`UDACITY_HOLDOUT_FRAMES` frames (weight ``1 - photos_weight``) and :data:`DEBIAN_PHOTOS`
    (weight ``photos_weight`` shared among them)."""
    root = realdata_dir()
    sources = [RealSource(path=str(root / "udacity_highway" / "frames"), kind="video", start=0,
                          stop=UDACITY_FRAMES - UDACITY_HOLDOUT_FRAMES, weight=1.0 - photos_weight,
                          name="udacity_highway", licence="MIT")]
    return RealCorpus(sources=sources + _photo_sources(DEBIAN_PHOTOS, photos_weight))


def objects_corpus() -> RealCorpus:
    """The ``real_objects`` preset's corpus: close-ups of objects (:data:`LOMIRI_PHOTOS`, weight 0.6) beside
    the default corpus's photographs (0.25) and training frames of the Udacity clip (0.15)."""
    udacity = dataclasses.replace(default_corpus().sources[0], weight=0.15)
    return RealCorpus(sources=[udacity, *_photo_sources(DEBIAN_PHOTOS, 0.25), *_photo_sources(LOMIRI_PHOTOS, 0.6)])


def udacity_holdout_source() -> RealSource:
    """The last :data:`UDACITY_HOLDOUT_FRAMES` frames of the Udacity clip: never trained on."""
    return RealSource(path=str(realdata_dir() / "udacity_highway" / "frames"), kind="video",
                      start=UDACITY_FRAMES - UDACITY_HOLDOUT_FRAMES, stop=UDACITY_FRAMES,
                      name="udacity_highway_holdout", licence="MIT")


def read_image(path: str | Path, max_side: int = MAX_SOURCE_SIDE) -> np.ndarray:
    """An image file -> [H, W, 3] uint8 RGB (alpha dropped, grey expanded, 16-bit scaled), downscaled so its
    longer side is at most ``max_side``; MissingFileError / FileFormatError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"image {path} does not exist")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise FileFormatError(f"{path} could not be decoded as an image")
    if img.dtype == np.uint16:
        img = (img / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise FileFormatError(f"{path}: unsupported pixel type {img.dtype} (8- or 16-bit images expected)")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(fit_max_side(img, max_side))


def read_video(path: str | Path, start: int = 0, stop: int = 0, max_side: int = MAX_SOURCE_SIDE) -> list[np.ndarray]:
    """Frames [start, stop) of a video file (stop 0 = to the end) as [H, W, 3] uint8 RGB; FileFormatError
    when it cannot be opened or gives no frame."""
    return [fit_max_side(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_side) for _, bgr in iter_video_frames(path, start, stop)]


@lru_cache(maxsize=64)
def _load_source_cached(path: str, kind: str, start: int, stop: int) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    p = Path(path)
    if not p.exists():
        hint = " (install the Debian wallpaper packages: apt-get install " + " ".join(DEBIAN_PACKAGES) + ")" \
            if "/usr/share/" in path else ""
        raise MissingFileError(f"real image source {path} does not exist{hint}")
    if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
        frames = read_video(p, start, stop)
        return tuple(f"{p.name}#{start + i}" for i in range(len(frames))), tuple(frames)
    files = list_images(p) if p.is_dir() else [p]
    files = files[start: stop or None]
    if not files:
        raise MissingFileError(f"real image source {path} holds no image ({', '.join(IMAGE_SUFFIXES)}) in [{start}, {stop or 'end'})")
    frames = [read_image(f) for f in files]
    if kind == "video" and len({f.shape for f in frames}) > 1:
        raise InvalidInputError(f"video frames in {path} differ in size: {sorted({f.shape for f in frames})}")
    return tuple(f.name for f in files), tuple(frames)


def load_source(source: RealSource) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    """(frame names, frames [H, W, 3] uint8 RGB) of a source, cached per process (do not modify the frames)."""
    return _load_source_cached(source.path, source.resolved_kind, source.start, source.stop)


# --------------------------------------------------------------------------------------------------
# Views, masks, flow
# --------------------------------------------------------------------------------------------------


def view_box(rng: np.random.Generator, src_hw: tuple[int, int], out_hw: tuple[int, int],
             fraction: tuple[float, float]) -> tuple[int, int, int, int]:
    """A random crop box (x0, y0, w, h) with the aspect ratio of ``out_hw``, its width ``fraction`` (drawn
    in the given range) of the largest such box inside ``src_hw``."""
    H, W = src_hw
    oh, ow = out_hw
    full_w = min(W, H * ow / oh)
    f = float(rng.uniform(*fraction))
    w = max(min(round(full_w * f), W), 8)
    h = max(min(round(w * oh / ow), H), 8)
    x0 = int(rng.integers(0, W - w + 1))
    y0 = int(rng.integers(0, H - h + 1))
    return x0, y0, w, h


def crop_resize(img: np.ndarray, box: tuple[int, int, int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] cropped to ``box`` and resized (area) to ``out_hw`` -> float32 [h, w, 3] in [0, 1]."""
    x0, y0, w, h = box
    crop = img[y0:y0 + h, x0:x0 + w]
    interp = cv2.INTER_AREA if w >= out_hw[1] else cv2.INTER_LINEAR
    out = cv2.resize(crop, (out_hw[1], out_hw[0]), interpolation=interp)
    return out.astype(np.float32) / 255.0


def object_mask(rng: np.random.Generator, height: int, width: int, area: tuple[float, float] = (0.02, 0.25),
                sigma: tuple[float, float] = (0.6, 2.0)) -> np.ndarray:
    """A soft mask [H, W] float32 in [0, 1] shaped like an inserted object: an organic blob (smooth noise
    thresholded inside an ellipse) or a vehicle-like rounded box standing on a random ground line, covering
    a fraction ``area`` of the image, with a soft edge of Gaussian ``sigma`` pixels (interior exactly 1)."""
    target_area = float(rng.uniform(*area)) * height * width
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if rng.uniform() < 0.5:  # organic blob
        ry = np.sqrt(target_area / np.pi / rng.uniform(0.5, 2.0))
        rx = target_area / np.pi / ry
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.1, 0.9) * width
        noise = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), sigmaX=max(ry, rx) * 0.35)
        noise /= max(float(np.abs(noise).max()), 1e-6)
        d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        binary = (d + 0.6 * noise) < 1.0
    else:  # rounded box on the ground: vehicles, signs, pedestrians
        aspect = float(rng.choice([rng.uniform(1.2, 2.8), rng.uniform(0.3, 0.7)]))  # wide (car) or tall (person)
        h = np.sqrt(target_area / aspect)
        w = h * aspect
        y1 = rng.uniform(0.45, 0.98) * height
        cx = rng.uniform(0.05, 0.95) * width
        r = float(rng.uniform(0.1, 0.35)) * min(h, w)
        dx = np.maximum(np.abs(xx - cx) - (w / 2 - r), 0)
        dy = np.maximum(np.abs(yy - (y1 - h / 2)) - (h / 2 - r), 0)
        binary = np.sqrt(dx**2 + dy**2) <= r
    if binary.sum() < 16:  # far off the image: fall back to a centred ellipse
        binary = (((yy - height / 2) / (height / 6)) ** 2 + ((xx - width / 2) / (width / 8)) ** 2) < 1
    return soft_mask(binary, float(rng.uniform(*sigma)))


def segment_mask(rng: np.random.Generator, image: np.ndarray, area: tuple[float, float] = (0.02, 0.25),
                 sigma: tuple[float, float] = (0.6, 2.0)) -> np.ndarray:
    """A soft mask [H, W] float32 that follows the image's own edges, as a real object's outline does: the
    region a colour flood fill from a random pixel of an edge-preserving smoothed copy of ``image`` [H, W, 3]
    (in [0, 1]) reaches, its tolerance raised step by step until the region covers a fraction drawn from
    ``area``, holes filled. A mask shaped by :func:`object_mask` cuts across the picture, so a changed region
    shows at its border; here it does not, and only the region's look against the rest can tell. Falls back
    to :func:`object_mask` when no seed gives a region of that size."""
    height, width = image.shape[:2]
    smooth = cv2.bilateralFilter((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), 9, 40.0, 5.0)
    lo, hi = float(area[0]), float(area[1])
    target = float(rng.uniform(lo, hi))
    for _seed in range(6):
        seed = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        region = None
        for tol in (2, 4, 6, 9, 13, 18, 25, 35):
            filled = np.zeros((height + 2, width + 2), np.uint8)
            cv2.floodFill(smooth, filled, seed, (0, 0, 0), (tol,) * 3, (tol,) * 3,
                          flags=4 | cv2.FLOODFILL_MASK_ONLY | (255 << 8))
            grown = filled[1:-1, 1:-1]
            if grown.mean() / 255.0 > hi:
                break
            region = grown
            if grown.mean() / 255.0 >= target:
                break
        if region is None:
            continue
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        solid = cv2.drawContours(np.zeros_like(region), contours, -1, 1, thickness=cv2.FILLED)
        if lo <= solid.mean() <= hi:
            return soft_mask(solid.astype(bool), float(rng.uniform(*sigma)))
    return object_mask(rng, height, width, area, sigma)


def dis_flow(frames: np.ndarray, fb_tolerance: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Backward flow of a video without geometry: frames [T, H, W, 3] in [0, 1] -> (flow [T, H, W, 2],
    valid [T, H, W] bool), the project's convention (pixel p at t shows what p + flow[p] shows at t - 1;
    zeros and all False at t = 0). OpenCV DIS flow (preset MEDIUM) both ways; a pixel is valid where the
    forward flow at p + flow[p] brings it back within ``fb_tolerance`` px (+5 % of the motion), inside the image."""
    T, H, W = frames.shape[:3]
    grey = [cv2.cvtColor((np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY) for f in frames]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = np.zeros((T, H, W, 2), np.float32)
    valid = np.zeros((T, H, W), bool)
    xx, yy = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    for t in range(1, T):
        back = dis.calc(grey[t], grey[t - 1], None)  # t -> t-1
        fwd = dis.calc(grey[t - 1], grey[t], None)  # t-1 -> t
        mx, my = xx + back[..., 0], yy + back[..., 1]
        fwd_at = cv2.remap(fwd, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(1e4, 1e4))
        err = np.linalg.norm(back + fwd_at, axis=-1)
        inside = (mx >= 0) & (mx <= W - 1) & (my >= 0) & (my <= H - 1)
        valid[t] = inside & (err <= fb_tolerance + 0.05 * np.linalg.norm(back, axis=-1))
        flow[t] = back
    return flow, valid


def srgb_eotf(x: np.ndarray) -> np.ndarray:
    """Display sRGB [..., 3] in [0, 1] -> linear light (inverse of ``scene_tools.pbr.srgb_oetf``)."""
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------------


@dataclass
class _RealCommon:
    """Fields every real stream has: ``corpus``; output ``width`` x ``height``; ``view_fraction``
    (low, high): a view's crop width as a fraction of the largest crop with the output's aspect."""

    corpus: RealCorpus = field(default_factory=RealCorpus)
    width: int = 256
    height: int = 144
    view_fraction: tuple[float, float] = (0.25, 1.0)

    def _check_real(self) -> None:
        o = type(self).__name__
        require(self.width >= 16 and self.height >= 16, o, f"image size {self.width}x{self.height} must be at least 16x16")
        lo, hi = (float(v) for v in self.view_fraction)
        require(len(self.view_fraction) == 2 and 0 < lo <= hi <= 1, o, f"view_fraction={self.view_fraction} must be 0 < low <= high <= 1")
        self.view_fraction = (lo, hi)


@dataclass
class RealIspStreamConfig(_RealCommon, Config):
    """``real_isp``: ISP region mismatch on real views (module docstring). ``isp``: the ISP ranges (those of
    the synthetic ISP stream); ``mask_area`` (fraction of the image) and ``mask_sigma`` (px) of the object
    mask; ``min_change``: parameters are redrawn (up to 8 times) until the mean absolute change inside the
    mask is at least this; ``segment_prob``: the share of masks that follow the picture's own edges
    (:func:`segment_mask`) instead of cutting across it (:func:`object_mask`)."""

    isp: IspRanges = field(default_factory=IspRanges)
    mask_area: tuple[float, float] = (0.02, 0.25)
    mask_sigma: tuple[float, float] = (0.6, 2.0)
    min_change: float = 0.02
    segment_prob: float = 0.0

    def __post_init__(self) -> None:
        self._check_real()
        _check_mask_ranges(self)
        require(all_finite(self.min_change) and self.min_change >= 0, type(self).__name__, "min_change must be >= 0")


@dataclass
class RealRpbStreamConfig(_RealCommon, Config):
    """``real_rpb``: Random Poisson Blending on real views (module docstring). ``alpha`` (low, high) blend
    strength; ``clone_dilate`` px around the mask form the Poisson region; mask and ``min_change`` as for
    ``real_isp``."""

    mask_area: tuple[float, float] = (0.02, 0.2)
    mask_sigma: tuple[float, float] = (0.6, 2.0)
    alpha: tuple[float, float] = (0.5, 1.0)
    clone_dilate: int = 2
    min_change: float = 0.02

    def __post_init__(self) -> None:
        self._check_real()
        _check_mask_ranges(self)
        a = tuple(self.alpha)
        require(len(a) == 2 and 0 <= a[0] <= a[1] <= 1, type(self).__name__, f"alpha={self.alpha} must be (low, high) in [0, 1]")
        require(self.clone_dilate >= 1, type(self).__name__, "clone_dilate must be >= 1")


@dataclass
class RealIdentityStreamConfig(_RealCommon, Config):
    """``real_identity``: input = target. With probability ``mask_prob`` the item carries an object mask
    (an inserted object that is already right), else an empty mask (nothing inserted); ``segment_prob`` as
    for ``real_isp``."""

    mask_prob: float = 0.5
    mask_area: tuple[float, float] = (0.02, 0.25)
    mask_sigma: tuple[float, float] = (0.6, 2.0)
    segment_prob: float = 0.0

    def __post_init__(self) -> None:
        self._check_real()
        _check_mask_ranges(self)
        require(all_finite(self.mask_prob) and 0 <= self.mask_prob <= 1, type(self).__name__, "mask_prob must be in [0, 1]")


@dataclass
class RealVideoStreamConfig(_RealCommon, Config):
    """``real_video``: ``seq_len`` consecutive frames (every ``stride``-th) of a video source, one crop for
    all; with probability ``flicker_prob`` the input gets ``flicker`` (frame 0 clean), else it is the clean
    video. Mask all zero (nothing inserted); flow from :func:`dis_flow`."""

    seq_len: int = 5
    stride: tuple[int, int] = (1, 2)
    flicker_prob: float = 0.5
    flicker: FlickerConfig = field(default_factory=FlickerConfig)

    def __post_init__(self) -> None:
        self._check_real()
        o = type(self).__name__
        require(self.seq_len >= 2, o, f"seq_len={self.seq_len} must be >= 2")
        s = tuple(int(v) for v in self.stride)
        require(len(s) == 2 and 1 <= s[0] <= s[1], o, f"stride={self.stride} must be (low, high) with 1 <= low <= high")
        self.stride = s
        require(all_finite(self.flicker_prob) and 0 <= self.flicker_prob <= 1, o, "flicker_prob must be in [0, 1]")


def _check_mask_ranges(cfg) -> None:
    o = type(cfg).__name__
    a, s = tuple(cfg.mask_area), tuple(cfg.mask_sigma)
    require(len(a) == 2 and 0 < a[0] <= a[1] <= 0.8, o, f"mask_area={cfg.mask_area} must be (low, high) within (0, 0.8]")
    require(len(s) == 2 and 0 <= s[0] <= s[1], o, f"mask_sigma={cfg.mask_sigma} must be (low, high) with 0 <= low <= high")
    p = getattr(cfg, "segment_prob", 0.0)
    require(all_finite(p) and 0 <= p <= 1, o, f"segment_prob={p!r} must be in [0, 1]")


class _Sampler:
    """Draws real views from a corpus, deterministic in its generator."""

    def __init__(self, cfg: _RealCommon, rng: np.random.Generator, videos_only: bool = False):
        sources = cfg.corpus.resolved()
        if videos_only:
            sources = [s for s in sources if s.resolved_kind == "video"]
            if not sources:
                raise ConfigError(f"{type(cfg).__name__}: the corpus holds no video source (kind 'video')")
        self.sources = sources
        w = np.array([s.weight for s in sources], np.float64)
        self.p = w / w.sum()
        self.cfg, self.rng = cfg, rng
        self.hw = (cfg.height, cfg.width)

    def source(self) -> RealSource:
        return self.sources[int(self.rng.choice(len(self.sources), p=self.p))]

    def view(self) -> tuple[np.ndarray, dict]:
        """One random view [H, W, 3] float32 and its provenance."""
        src = self.source()
        names, frames = load_source(src)
        k = int(self.rng.integers(0, len(frames)))
        box = view_box(self.rng, frames[k].shape[:2], self.hw, self.cfg.view_fraction)
        return crop_resize(frames[k], box, self.hw), _provenance(src, names[k], box)

    def clip(self, length: int, stride: int) -> tuple[np.ndarray, dict]:
        """``length`` consecutive frames (every ``stride``-th) of a video source, one crop: [T, H, W, 3]."""
        src = self.source()
        names, frames = load_source(src)
        span = (length - 1) * stride + 1
        if len(frames) < span:
            raise InvalidInputError(f"video source {src.path} has {len(frames)} frames; a clip needs {span}")
        k0 = int(self.rng.integers(0, len(frames) - span + 1))
        box = view_box(self.rng, frames[k0].shape[:2], self.hw, self.cfg.view_fraction)
        clip = np.stack([crop_resize(frames[k0 + i * stride], box, self.hw) for i in range(length)])
        md = _provenance(src, names[k0], box)
        md["frames"] = [int(src.start + k0 + i * stride) for i in range(length)]
        return clip, md


def _provenance(src: RealSource, frame: str, box) -> dict:
    return {"source": src.label, "source_path": src.path, "licence": src.licence or "unknown", "image": frame,
            "crop": [int(v) for v in box]}


def _item(stream: str, seed: int, index: int, inp: np.ndarray, target: np.ndarray, mask: np.ndarray,
          prov: dict, params: dict, flow: np.ndarray | None = None, valid: np.ndarray | None = None) -> PairItem:
    T, H, W = target.shape[:3]
    flow = np.zeros((T, H, W, 2), np.float32) if flow is None else flow
    valid = np.zeros((T, H, W), bool) if valid is None else valid
    md = {"stream": stream, "seed": int(seed), "item_index": int(index), "scene_id": f"{prov['source']}/{prov['image']}",
          "has_depth": False, **prov, "params": params}
    depth = np.full((T, H, W), np.inf, np.float32)
    return PairItem(np.clip(inp, 0, 1), target, mask, depth, flow, valid, md)


def _start(seed: int, count: int | None) -> np.random.Generator:
    if count is not None and count < 0:
        raise InvalidInputError(f"count={count} must be >= 0 or None")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed={seed!r} must be an integer >= 0")
    return np.random.default_rng([int(seed), 0x4EA1])


def _counter(count: int | None) -> Iterator[int]:
    i = 0
    while count is None or i < count:
        yield i
        i += 1


def _mask_change(inp: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    return float((np.abs(inp - target).mean(-1) * mask).sum() / max(float(mask.sum()), 1e-6))


def isp_region_mismatch(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                        ranges: IspRanges | None = None, min_change: float = 0.02) -> tuple[np.ndarray, IspParams, float]:
    """``image`` [H, W, 3] in [0, 1] (display sRGB) re-rendered through a random ISP (``ranges``) in linear
    light and blended back inside the soft ``mask`` [H, W]; parameters are redrawn (up to 8 times) until the
    mean absolute change inside the mask is at least ``min_change``. Returns (composite clipped to [0, 1],
    the ISP parameters, that change)."""
    linear = srgb_eotf(image)
    for _attempt in range(8):
        params = sample_isp_params(rng, ranges)
        comp = mask[..., None] * apply_isp(linear, params) + (1 - mask[..., None]) * image
        change = _mask_change(comp, image, mask)
        if change >= min_change:
            break
    return np.clip(comp, 0, 1).astype(np.float32), params, change


def _stream_mask(rng: np.random.Generator, cfg: RealIspStreamConfig | RealIdentityStreamConfig,
                 view: np.ndarray) -> np.ndarray:
    """The item's object mask: along the view's edges with probability ``cfg.segment_prob``, else across it
    (no draw at ``segment_prob`` 0, so earlier datasets regenerate unchanged)."""
    if cfg.segment_prob > 0 and rng.uniform() < cfg.segment_prob:
        return segment_mask(rng, view, cfg.mask_area, cfg.mask_sigma)
    return object_mask(rng, cfg.height, cfg.width, cfg.mask_area, cfg.mask_sigma)


def generate_real_isp(config: RealIspStreamConfig | None = None, seed: int = 0, count: int | None = None) -> Iterator[PairItem]:
    """``real_isp`` items (module docstring), deterministic in ``seed``; endless if ``count`` is None."""
    cfg = config or RealIspStreamConfig()
    rng = _start(seed, count)
    views = _Sampler(cfg, rng)
    for index in _counter(count):
        target, prov = views.view()
        mask = _stream_mask(rng, cfg, target)
        inp, params, change = isp_region_mismatch(target, mask, rng, cfg.isp, cfg.min_change)
        yield _item("real_isp", seed, index, inp[None], target[None], mask[None], prov,
                    {"isp": params.to_dict(), "mean_abs_change_in_mask": round(change, 6)})


def generate_real_rpb(config: RealRpbStreamConfig | None = None, seed: int = 0, count: int | None = None) -> Iterator[PairItem]:
    """``real_rpb`` items (module docstring), deterministic in ``seed``; endless if ``count`` is None."""
    cfg = config or RealRpbStreamConfig()
    rng = _start(seed, count)
    views = _Sampler(cfg, rng)
    H, W = cfg.height, cfg.width
    kernel = np.ones((2 * cfg.clone_dilate + 1,) * 2, np.uint8)
    for index in _counter(count):
        target, prov = views.view()
        reference, ref_prov = views.view()
        mask = object_mask(rng, H, W, cfg.mask_area, cfg.mask_sigma)
        clone = cv2.dilate((mask > 0.02).astype(np.uint8), kernel)
        clone[0, :] = clone[-1, :] = 0
        clone[:, 0] = clone[:, -1] = 0
        x0, y0, x1, y1 = _box(clone)
        for _attempt in range(8):
            nx = int(rng.integers(1, max(2, W - (x1 - x0))))
            ny = int(rng.integers(1, max(2, H - (y1 - y0))))
            alpha = float(rng.uniform(*cfg.alpha))
            fp = poisson_blend_foreground(target, clone, reference, (nx - x0, ny - y0))
            ft = alpha * fp + (1 - alpha) * target
            inp = mask[..., None] * ft + (1 - mask[..., None]) * target
            change = _mask_change(inp, target, mask)
            if change >= cfg.min_change:
                break
        yield _item("real_rpb", seed, index, inp[None], target[None], mask[None], prov, {
            "reference": f"{ref_prov['source']}/{ref_prov['image']}", "reference_crop": ref_prov["crop"],
            "offset": [nx - x0, ny - y0], "alpha": round(alpha, 6), "mean_abs_change_in_mask": round(change, 6)})


def generate_real_identity(config: RealIdentityStreamConfig | None = None, seed: int = 0, count: int | None = None) -> Iterator[PairItem]:
    """``real_identity`` items (module docstring), deterministic in ``seed``; endless if ``count`` is None."""
    cfg = config or RealIdentityStreamConfig()
    rng = _start(seed, count)
    views = _Sampler(cfg, rng)
    for index in _counter(count):
        target, prov = views.view()
        with_mask = bool(rng.uniform() < cfg.mask_prob)
        mask = _stream_mask(rng, cfg, target) if with_mask else np.zeros((cfg.height, cfg.width), np.float32)
        yield _item("real_identity", seed, index, target[None], target[None], mask[None], prov, {"with_mask": with_mask})


def generate_real_video(config: RealVideoStreamConfig | None = None, seed: int = 0, count: int | None = None) -> Iterator[PairItem]:
    """``real_video`` items (module docstring), deterministic in ``seed``; endless if ``count`` is None."""
    cfg = config or RealVideoStreamConfig()
    rng = _start(seed, count)
    views = _Sampler(cfg, rng, videos_only=True)
    for index in _counter(count):
        stride = int(rng.integers(cfg.stride[0], cfg.stride[1] + 1))
        target, prov = views.clip(cfg.seq_len, stride)
        flow, valid = dis_flow(target)
        flicker = bool(rng.uniform() < cfg.flicker_prob)
        gains = flicker_gains(rng, cfg.seq_len, cfg.flicker) if flicker else np.ones((cfg.seq_len, 3), np.float32)
        inp = apply_flicker(target, gains) if flicker else target.copy()
        mask = np.zeros(target.shape[:3], np.float32)
        yield _item("real_video", seed, index, inp, target, mask, prov,
                    {"stride": stride, "flicker": flicker, "gains": np.round(gains, 6).tolist()}, flow, valid)


REAL_STREAMS = {
    "real_isp": (RealIspStreamConfig, generate_real_isp),
    "real_rpb": (RealRpbStreamConfig, generate_real_rpb),
    "real_identity": (RealIdentityStreamConfig, generate_real_identity),
    "real_video": (RealVideoStreamConfig, generate_real_video),
}
# Items without geometry: models are never given their (all-inf) depth.
DEPTHLESS_STREAMS: tuple[str, ...] = tuple(REAL_STREAMS)


__all__ = [
    "DEPTHLESS_STREAMS", "EVAL_ONLY_NAMES", "REAL_STREAMS", "RealCorpus", "RealIdentityStreamConfig",
    "RealIspStreamConfig", "RealRpbStreamConfig", "RealSource", "RealVideoStreamConfig", "default_corpus",
    "dis_flow", "generate_real_identity", "generate_real_isp", "generate_real_rpb", "generate_real_video",
    "isp_region_mismatch", "load_source", "object_mask", "read_image", "read_video", "realdata_dir", "srgb_eotf", "udacity_holdout_source",
]
