"""Reproducible shards of PairItems: writer (resumable, splittable over machines) and torch reader.

Layout of a dataset folder::

    out_dir/
      dataset.yaml          format, version (= manifest hash), item counts, shard table (bytes, sha256)
      generation.yaml       what was asked for (seed, shard_size, per-stream counts and configs)
      manifest.jsonl        one line per item, sorted by id
      shards/<stream>-<chunk>.safetensors   the items' arrays under "<item id>/<field>" keys
      shards/<stream>-<chunk>.yaml          that shard's record: bytes, sha256, manifest lines

Stored dtypes: input/target/mask and the optional asset_mask and shadow_hint uint8 (value * 255, rounded), depth float16
(inf kept), flow float16 (pixels; ~0.03 px resolution below 64 px of motion), flow_valid uint8. An item's ``sha256`` hashes its
stored arrays (name, dtype, shape, bytes, in sorted key order). The manifest hash (dataset version) is
the sha256 of the sorted manifest lines (compact, key-sorted JSON), so it depends on content only.

Writing: every file is atomic (temp file + rename). A shard is complete when its ``.yaml`` record exists
and the ``.safetensors`` file matches it (size and sha256); the record is written after the data, so an
interrupted shard has no record and is discarded and regenerated on the next run, never half-read.

Work split: stream ``s`` with ``count`` items is cut into chunks of ``shard_size`` consecutive item
indices; chunk ``j`` becomes shard ``s-j`` with ids ``s-<index>`` and is generated from its own seed
(derived from the dataset seed, the stream name and j), so it is the same on any machine. Chunk ``k`` of
the global chunk list (streams sorted by name) belongs to machine ``k % n`` of ``shard=(i, n)``. On one
machine, ``workers=N`` generates N chunks at once in separate processes (each shard's ``.time.yaml`` then
holds its process's time, so summed per stream they are process minutes, not wall time).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from simharmony.data.item import ARRAY_FIELDS, OPTIONAL_ARRAY_FIELDS, REQUIRED_METADATA, PairItem
from simharmony.errors import (
    ConfigError,
    CorruptFileError,
    FileFormatError,
    InvalidInputError,
    ItemIndexError,
    MissingFileError,
)
from simharmony.utils.checks import as_finite_number
from simharmony.utils.config import Config
from simharmony.utils.io import PathLike, atomic_path, ensure_writable_dir, load_yaml, save_yaml, write_text_atomic

FORMAT = "simharmony.pair_shards"
FORMAT_VERSION = 1

_STORED = {  # field -> stored dtype
    "input": np.uint8, "target": np.uint8, "mask": np.uint8, "asset_mask": np.uint8, "shadow_hint": np.uint8,
    "depth": np.float16, "flow": np.float16, "flow_valid": np.uint8,
}


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def encode_item(item: PairItem) -> dict[str, np.ndarray]:
    """PairItem -> stored arrays (see module docstring for dtypes)."""
    out = {}
    for name, a in item.arrays().items():
        if _STORED[name] is np.uint8 and name != "flow_valid":
            a = np.rint(np.clip(a, 0.0, 1.0) * 255.0)
        out[name] = np.ascontiguousarray(a.astype(_STORED[name]))
    return out


def decode_item(arrays: Mapping[str, np.ndarray], metadata: dict) -> PairItem:
    """Stored arrays -> PairItem (float32 in [0, 1], bool flow_valid)."""
    a = {}
    for name in ARRAY_FIELDS + tuple(n for n in OPTIONAL_ARRAY_FIELDS if n in arrays):
        x = np.asarray(arrays[name])
        if name == "flow_valid":
            a[name] = x.astype(bool)
        elif x.dtype == np.uint8:
            a[name] = x.astype(np.float32) / np.float32(255.0)
        else:
            a[name] = x.astype(np.float32)
    return PairItem(metadata=metadata, **a)


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _line(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)


def manifest_hash(lines: list[str]) -> str:
    """sha256 of the sorted manifest lines (each without its newline), joined by newlines."""
    return hashlib.sha256(("\n".join(sorted(lines)) + "\n").encode("utf-8")).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Shard files
# --------------------------------------------------------------------------------------------------


def write_shard(folder: PathLike, name: str, items: list[tuple[str, PairItem]]) -> dict:
    """Write ``items`` [(item id, PairItem)] as ``folder/name.safetensors`` then its record
    ``folder/name.yaml`` (both atomic; the record last). Returns the record."""
    from safetensors.numpy import save_file

    if not items:
        raise InvalidInputError(f"shard {name!r} has no items")
    folder = Path(folder)
    tensors: dict[str, np.ndarray] = {}
    lines = []
    for item_id, item in items:
        if "/" in item_id:
            raise InvalidInputError(f"item id {item_id!r} must not contain '/'")
        enc = encode_item(item)
        keys = []
        for field_name, arr in enc.items():
            key = f"{item_id}/{field_name}"
            if key in tensors:
                raise InvalidInputError(f"duplicate item id {item_id!r} in shard {name!r}")
            tensors[key] = arr
            keys.append(key)
        md = item.metadata
        lines.append(_line({
            "id": item_id, "stream": md["stream"], "shard": name, "keys": keys,
            "shapes": {k: list(v.shape) for k, v in enc.items()}, "dtypes": {k: v.dtype.str for k, v in enc.items()},
            "num_frames": item.num_frames, "params": md["params"], "seed": md["seed"], "scene_id": md["scene_id"],
            "extra": {k: v for k, v in md.items() if k not in REQUIRED_METADATA},
            "sha256": arrays_sha256(enc),
        }))
    data_path = folder / f"{name}.safetensors"
    try:
        with atomic_path(data_path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "shard": name})
        record = {"shard": name, "file": data_path.name, "bytes": data_path.stat().st_size,
                  "sha256": _file_sha256(data_path), "items": lines}
        save_yaml(folder / f"{name}.yaml", record)
    except OSError as e:  # disk full, quota, folder removed: the temp file is gone, the shard stays incomplete
        data_path.unlink(missing_ok=True)
        raise FileFormatError(f"cannot write shard {name!r} into {folder}: {e} (disk full or folder not writable?); "
                              "free space and rerun: finished shards are kept") from e
    return record


def read_shard_record(folder: PathLike, name: str, check_data: bool = True) -> dict | None:
    """The record of a complete shard, or None if the shard is absent or incomplete (no record, or data
    that does not match it: an interrupted write)."""
    folder = Path(folder)
    rec_path, data_path = folder / f"{name}.yaml", folder / f"{name}.safetensors"
    if not rec_path.is_file() or not data_path.is_file():
        return None
    try:
        rec = load_yaml(rec_path)
    except CorruptFileError:
        return None
    if not isinstance(rec, dict) or {"bytes", "sha256", "items"} - set(rec):
        return None
    if check_data and (data_path.stat().st_size != rec["bytes"] or _file_sha256(data_path) != rec["sha256"]):
        return None
    return rec


def _decode_line(line: str, where: str) -> dict:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"{where}: not a JSON line: {e}") from e
    need = {"id", "stream", "shard", "keys", "shapes", "dtypes", "num_frames", "params", "seed", "scene_id", "sha256"}
    if not isinstance(rec, dict) or need - set(rec):
        raise CorruptFileError(f"{where}: manifest line lacks {sorted(need - set(rec if isinstance(rec, dict) else {}))}")
    return rec


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def chunk_seed(seed: int, stream: str, chunk: int) -> int:
    """The generator seed of chunk ``chunk`` of ``stream`` (same on every machine)."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(stream.encode()), int(chunk)])
    return int(ss.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)


@dataclass(frozen=True)
class ShardPlan:
    stream: str
    chunk: int
    start: int
    count: int

    @property
    def name(self) -> str:
        return f"{self.stream}-{self.chunk:05d}"

    def item_ids(self) -> list[str]:
        return [f"{self.stream}-{k:07d}" for k in range(self.start, self.start + self.count)]


def plan_shards(streams: Mapping[str, int], shard_size: int, shard: tuple[int, int] = (0, 1)) -> list[ShardPlan]:
    """The chunks machine ``shard[0]`` of ``shard[1]`` must produce (module docstring)."""
    i, n = _check_shard(shard)
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise ConfigError(f"shard_size={shard_size!r} must be an integer >= 1")
    plans = []
    for stream in sorted(streams):
        count = streams[stream]
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ConfigError(f"item count for stream {stream!r} must be an integer >= 0, got {count!r}")
        for j in range(math.ceil(count / shard_size)):
            plans.append(ShardPlan(stream, j, j * shard_size, min(shard_size, count - j * shard_size)))
    return [p for k, p in enumerate(plans) if k % n == i]


def _check_shard(shard) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise ConfigError(f"shard must be (i, n), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"shard=(i, n) needs n >= 1 and 0 <= i < n, got {shard!r}")
    return i, n


def _with_new_defaults(previous: Any, cfgs: dict[str, Config]) -> Any:
    """A stored generation record with each stream config read back through its class: a field added to a
    stream config since the record was written takes its default (which must keep the old items), so the
    dataset still resumes."""
    if not isinstance(previous, dict) or not isinstance(previous.get("configs"), dict):
        return previous
    configs = dict(previous["configs"])
    for name, value in configs.items():
        if name in cfgs and isinstance(value, dict):
            try:
                configs[name] = type(cfgs[name]).from_dict(value).to_dict()
            except (ConfigError, TypeError, ValueError):
                pass  # left as stored: the comparison reports the difference
    return {**previous, "configs": configs}


def generate_dataset(
    out_dir: PathLike,
    streams: Mapping[str, int],
    seed: int = 0,
    shard_size: int = 64,
    shard: tuple[int, int] = (0, 1),
    configs: Mapping[str, Config] | None = None,
    progress: bool = True,
    workers: int = 1,
) -> dict:
    """Generate (or resume) a dataset of ``streams`` {name: item count} into ``out_dir``.

    ``configs`` {name: stream Config} (default: each stream's default config). Shards already complete
    are kept; interrupted ones are regenerated. ``shard=(i, n)``: produce only this machine's chunks
    (run :func:`finalize_dataset` after copying all machines' ``shards/`` into one folder; each run also
    finalizes what it sees). ``workers`` > 1 generates that many chunks at once in spawned processes,
    the machine's cores split between them (the items are the same as with one). Re-running into a folder
    made with another seed, shard size, counts or configs raises ConfigError. Returns the dataset record
    (dataset.yaml contents).
    """
    from simharmony.data.registry import STREAMS

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be an integer >= 0")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be an integer >= 1")
    unknown = sorted(set(streams) - set(STREAMS))
    if unknown:
        raise ConfigError(f"unknown streams {unknown}; available: {sorted(STREAMS)}")
    configs = dict(configs or {})
    bad = sorted(set(configs) - set(STREAMS))
    if bad:
        raise ConfigError(f"configs for unknown streams {bad}; available: {sorted(STREAMS)}")
    cfgs = {}
    for name in streams:
        cls = STREAMS[name][0]
        cfg = configs.get(name, cls())
        if not isinstance(cfg, cls):
            raise ConfigError(f"config for stream {name!r} must be {cls.__name__}, got {type(cfg).__name__}")
        cfgs[name] = cfg
    plans = plan_shards(streams, shard_size, shard)

    out = Path(out_dir)
    shard_dir = out / "shards"
    ensure_writable_dir(shard_dir)
    generation = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "seed": int(seed), "shard_size": int(shard_size),
        "streams": {k: int(streams[k]) for k in sorted(streams)},
        "configs": {k: cfgs[k].to_dict() for k in sorted(cfgs)},
    }
    gen_path = out / "generation.yaml"
    if gen_path.is_file():
        previous = _with_new_defaults(load_yaml(gen_path), cfgs)
        if previous != generation:
            raise ConfigError(
                f"{out} already holds a dataset generated with other settings ({gen_path}); "
                "use a new folder or the same seed, shard size, counts and configs"
            )
    else:
        save_yaml(gen_path, generation)

    todo = []
    for p in plans:
        for stale in shard_dir.glob(f".{p.name}.*.tmp*"):  # temp files of a killed run (ours only)
            stale.unlink(missing_ok=True)
        if read_shard_record(shard_dir, p.name) is None:
            todo.append(p)
    # streams interleaved (first chunk of every stream, then the second, ...) so a partly generated
    # dataset already mixes all streams; the order does not change any chunk's items
    todo.sort(key=lambda p: (p.chunk, p.stream))
    with tqdm(total=sum(p.count for p in todo), desc="generate dataset", unit="item", disable=not progress) as bar:
        if workers == 1 or len(todo) <= 1:
            for p in todo:
                _generate_chunk(p, cfgs[p.stream], seed, shard_dir, bar.update)
        else:
            _generate_chunks_parallel(todo, cfgs, seed, shard_dir, min(workers, len(todo)), bar.update)
    return finalize_dataset(out)


def stream_seconds(out_dir: PathLike) -> dict[str, dict[str, float]]:
    """Per stream: generation ``seconds`` and ``items`` summed over the shards that recorded their time
    (``shards/<name>.time.yaml``; shards copied from other machines keep theirs)."""
    out: dict[str, dict[str, float]] = {}
    for path in sorted((Path(out_dir) / "shards").glob("*.time.yaml")):
        rec = load_yaml(path)
        stream = path.name[: -len(".time.yaml")].rsplit("-", 1)[0]
        if not isinstance(rec, dict) or "seconds" not in rec:
            continue
        acc = out.setdefault(stream, {"seconds": 0.0, "items": 0})
        acc["seconds"] += float(rec["seconds"])
        acc["items"] += int(rec.get("items", 0))
    return out


def _generate_chunk(plan: ShardPlan, cfg: Config, seed: int, shard_dir: Path, on_item: Callable[[int], Any]) -> None:
    """Generate one chunk and write it as a shard, with its generation time beside it."""
    from simharmony.data.registry import STREAMS

    started = time.perf_counter()
    gen = STREAMS[plan.stream][1](cfg, chunk_seed(seed, plan.stream, plan.chunk), plan.count)
    items = []
    for item_id, item in zip(plan.item_ids(), gen):
        items.append((item_id, item))
        on_item(1)
    if len(items) != plan.count:
        raise InvalidInputError(f"stream {plan.stream!r} produced {len(items)} of {plan.count} items for {plan.name}")
    write_shard(shard_dir, plan.name, items)
    # process time of this chunk, beside the shard (not part of its record or of the manifest hash)
    save_yaml(shard_dir / f"{plan.name}.time.yaml", {"seconds": round(time.perf_counter() - started, 3), "items": plan.count})


_worker_progress = None  # a worker process's queue of finished-item counts


def _init_worker(progress_queue, threads: int) -> None:
    """Cap every thread pool a chunk uses (numba kernels, Mitsuba/Dr.Jit, torch) to this worker's share.
    tqdm gets a thread lock: its default lock is a multiprocessing semaphore, which a worker terminated on
    Ctrl-C never unregisters (the resource tracker then warns of leaked semaphores)."""
    global _worker_progress
    import threading

    import drjit
    import numba
    import torch
    from tqdm.auto import tqdm

    _worker_progress = progress_queue
    tqdm.set_lock(threading.RLock())
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    drjit.set_thread_count(threads)
    torch.set_num_threads(threads)


def _worker_chunk(plan: ShardPlan, cfg: Config, seed: int, shard_dir: Path) -> None:
    _generate_chunk(plan, cfg, seed, shard_dir, _worker_progress.put)


def _generate_chunks_parallel(todo: list[ShardPlan], cfgs: Mapping[str, Config], seed: int, shard_dir: Path,
                              workers: int, on_item: Callable[[int], Any]) -> None:
    """Chunks of ``todo`` on ``workers`` spawned processes (spawn: numba's and torch's OpenMP pools do not
    survive a fork), first come first served. The first failure (or Ctrl-C) stops the workers and is raised
    here; shards already written stay and the next run resumes (it removes a killed write's temp file)."""
    import multiprocessing as mp
    import queue
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    progress = ctx.Queue()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // workers)

    def drain() -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                on_item(progress.get_nowait())

    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(progress, threads)) as pool:
        pending = {pool.submit(_worker_chunk, p, cfgs[p.stream], seed, shard_dir) for p in todo}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                drain()
                for f in done:
                    f.result()
        except BaseException:  # a failed chunk, or Ctrl-C: stop the others now (their shards are redone next run)
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        drain()


def finalize_dataset(out_dir: PathLike) -> dict:
    """Build ``manifest.jsonl`` and ``dataset.yaml`` from the complete shards in ``out_dir/shards``.

    ``complete`` in the record says whether every shard that ``generation.yaml`` asks for is present.
    """
    out = Path(out_dir)
    generation = load_yaml(out / "generation.yaml")
    expected = plan_shards(generation["streams"], generation["shard_size"])
    lines, table, missing = [], {}, []
    for p in expected:
        rec = read_shard_record(out / "shards", p.name, check_data=False)  # data checked on generation / read
        if rec is None:
            missing.append(p.name)
            continue
        lines.extend(rec["items"])
        table[p.name] = {"bytes": int(rec["bytes"]), "sha256": rec["sha256"], "items": len(rec["items"])}
    lines.sort(key=lambda line: json.loads(line)["id"])  # file in id order; the hash sorts lines itself
    ids = [json.loads(line)["id"] for line in lines]
    if len(set(ids)) != len(ids):
        raise CorruptFileError(f"{out}: duplicate item ids across shards")
    write_text_atomic(out / "manifest.jsonl", "".join(line + "\n" for line in lines))
    counts: dict[str, int] = {}
    seqs: dict[str, int] = {}
    for line in lines:
        rec = json.loads(line)
        counts[rec["stream"]] = counts.get(rec["stream"], 0) + 1
        seqs[rec["stream"]] = seqs.get(rec["stream"], 0) + int(rec["num_frames"] > 1)
    record = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "version": manifest_hash(lines),
        "num_items": len(lines), "complete": not missing, "missing_shards": missing,
        "streams": {k: {"items": counts[k], "sequences": seqs[k]} for k in sorted(counts)},
        "seed": generation["seed"], "shard_size": generation["shard_size"], "shards": table,
    }
    save_yaml(out / "dataset.yaml", record)
    return record


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


class ShardDataset:
    """A torch-style Dataset over a finalized dataset folder.

    On construction the manifest is checked against ``dataset.yaml`` (hash, shard table) and every shard
    file against the manifest (size, safetensors header: keys, dtypes, shapes); ``verify="full"`` also
    hashes every shard file. Each item read is checked against its manifest sha256. Any mismatch or
    truncation raises CorruptFileError; a missing shard MissingFileError.

    ``ds[i]`` -> dict of torch tensors ``input``/``target`` [T, H, W, 3] float32, ``mask``/``depth``
    [T, H, W], ``flow`` [T, H, W, 2], ``flow_valid`` [T, H, W] bool, ``asset_mask`` [T, H, W] (zeros where
    the item has none) with ``has_asset_mask`` [] bool (so items with and without stack into one batch),
    ``shadow_hint`` [T, H, W] with ``has_shadow_hint`` [] bool likewise, plus ``id`` and ``stream`` strings.
    ``ds[(i, start, length)]`` serves frames [start, start + length) of item i (flow reset at the first).
    ``streams`` keeps only these streams.
    """

    def __init__(self, root: PathLike, streams: Sequence[str] | None = None, verify: str = "header"):
        if verify not in ("header", "full"):
            raise InvalidInputError(f"verify={verify!r} must be 'header' or 'full'")
        self.root = Path(root)
        info_path, man_path = self.root / "dataset.yaml", self.root / "manifest.jsonl"
        for p in (info_path, man_path):
            if not p.is_file():
                raise MissingFileError(f"{p} not found: is {self.root} a dataset folder (run generate_dataset)?")
        self.info = load_yaml(info_path)
        if not isinstance(self.info, dict) or self.info.get("format") != FORMAT:
            raise CorruptFileError(f"{info_path} is not a {FORMAT} dataset record")
        try:
            text = man_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CorruptFileError(f"{man_path} is not UTF-8 text: {e}") from e
        lines = [ln for ln in text.split("\n") if ln]
        if manifest_hash(lines) != self.info.get("version"):
            raise CorruptFileError(
                f"{man_path} does not match the version in {info_path} (manifest hash differs): edited or truncated"
            )
        records = [_decode_line(ln, f"{man_path}:{k + 1}") for k, ln in enumerate(lines)]
        self._check_shards(records, verify)
        if streams is not None:
            unknown = sorted(set(streams) - {r["stream"] for r in records})
            if unknown:
                raise InvalidInputError(f"streams {unknown} are not in this dataset ({sorted(self.streams_of(records))})")
            records = [r for r in records if r["stream"] in streams]
        self.records = records
        self.version = self.info["version"]

    @staticmethod
    def streams_of(records) -> set[str]:
        return {r["stream"] for r in records}

    def _check_shards(self, records: list[dict], verify: str) -> None:
        from safetensors import safe_open

        table = self.info.get("shards", {})
        by_shard: dict[str, list[dict]] = {}
        for r in records:
            by_shard.setdefault(r["shard"], []).append(r)
        if set(by_shard) - set(table):
            raise CorruptFileError(f"manifest names shards {sorted(set(by_shard) - set(table))} not in dataset.yaml")
        for name, info in table.items():
            path = self.root / "shards" / f"{name}.safetensors"
            if not path.is_file():
                raise MissingFileError(f"shard file {path} is missing")
            size = path.stat().st_size
            if size != info["bytes"]:
                raise CorruptFileError(f"shard {path} has {size} bytes, the manifest says {info['bytes']} (truncated or replaced)")
            if verify == "full" and _file_sha256(path) != info["sha256"]:
                raise CorruptFileError(f"shard {path} does not match its sha256 in dataset.yaml")
            try:
                with safe_open(str(path), framework="numpy") as f:
                    keys = set(f.keys())
                    for r in by_shard.get(name, []):
                        for key in r["keys"]:
                            if key not in keys:
                                raise CorruptFileError(f"shard {path} lacks {key!r} named in the manifest")
                            sl = f.get_slice(key)
                            field_name = key.rsplit("/", 1)[1]
                            if list(sl.get_shape()) != r["shapes"][field_name]:
                                raise CorruptFileError(f"shard {path}: {key} has shape {sl.get_shape()}, manifest says {r['shapes'][field_name]}")
            except CorruptFileError:
                raise
            except Exception as e:  # safetensors' own errors on bad headers / short files
                raise CorruptFileError(f"cannot read shard {path} (truncated or not safetensors): {e}") from e

    def __len__(self) -> int:
        return len(self.records)

    def load_item(self, i: int) -> PairItem:
        """Item ``i`` as a PairItem (checked against its manifest sha256)."""
        from safetensors import safe_open

        if not 0 <= i < len(self.records):
            raise ItemIndexError(f"item {i} out of range for {len(self.records)} items")
        r = self.records[i]
        path = self.root / "shards" / f"{r['shard']}.safetensors"
        try:
            with safe_open(str(path), framework="numpy") as f:
                arrays = {key.rsplit("/", 1)[1]: f.get_tensor(key) for key in r["keys"]}
        except Exception as e:
            raise CorruptFileError(f"cannot read item {r['id']} from {path}: {e}") from e
        if arrays_sha256(arrays) != r["sha256"]:
            raise CorruptFileError(f"item {r['id']} in {path} does not match its sha256 in the manifest")
        md = {"stream": r["stream"], "params": r["params"], "seed": r["seed"], "scene_id": r["scene_id"], **r.get("extra", {})}
        return decode_item(arrays, md)

    def __getitem__(self, key) -> dict[str, Any]:
        import torch

        if isinstance(key, tuple):
            if len(key) != 3:
                raise InvalidInputError(f"a tuple key must be (item, start, length), got {key!r}")
            i, start, length = (as_finite_number(k, name, integer=True)
                                for k, name in zip(key, ("item index", "start frame", "length")))
            item = self.load_item(i).frames(start, length)
        else:
            i = as_finite_number(key, "item index", integer=True)
            item = self.load_item(i)
        out: dict[str, Any] = {name: torch.from_numpy(np.ascontiguousarray(getattr(item, name))) for name in ARRAY_FIELDS}
        for name, flag in (("asset_mask", "has_asset_mask"), ("shadow_hint", "has_shadow_hint")):
            value = getattr(item, name)
            out[name] = torch.from_numpy(value) if value is not None else torch.zeros_like(out["mask"])
            out[flag] = torch.tensor(value is not None)
        out["id"] = self.records[i]["id"]
        out["stream"] = item.stream
        return out


def batch_model_mask(batch: Mapping[str, Any], maskless_streams: Sequence[str]) -> tuple[Any, Any]:
    """The masks a model may see in a collated batch (or one ``ds[i]``), as :meth:`PairItem.model_mask`:
    ``mask`` [B, T, H, W], but on ``maskless_streams`` the item's ``asset_mask``; and ``given`` [B] bool,
    False on maskless items without an asset mask (their mask row is then zeros, to be ignored)."""
    import torch

    streams = batch["stream"]
    hide = torch.tensor(streams in maskless_streams if isinstance(streams, str) else [s in maskless_streams for s in streams],
                        device=batch["mask"].device)
    given = ~hide | batch["has_asset_mask"]
    shape = hide.shape + (1,) * (batch["mask"].dim() - hide.dim())
    return torch.where(hide.reshape(shape), batch["asset_mask"], batch["mask"]), given


class ConcatShardDataset:
    """Several dataset folders read as one (e.g. ``default`` plus ``recon_extra``): ``records`` in folder
    order, ``ds[i]`` / ``ds[(i, start, length)]`` as :class:`ShardDataset`. Every folder's items must share
    one image size, or batches could not stack (ConfigError otherwise). ``streams`` keeps these streams of
    every folder; ``folder_streams`` {folder as given in roots: streams} keeps only these of one folder
    (e.g. a folder whose relighting items another folder replaces)."""

    def __init__(self, roots: Sequence[PathLike], streams: Sequence[str] | None = None, verify: str = "header",
                 folder_streams: Mapping[str, Sequence[str]] | None = None):
        if not roots:
            raise ConfigError("ConcatShardDataset needs at least one dataset folder")
        folder_streams = dict(folder_streams or {})
        stray = sorted(set(folder_streams) - {str(r) for r in roots})
        if stray:
            raise ConfigError(f"folder_streams name folders {stray} that are not among {[str(r) for r in roots]}")
        self.parts = [ShardDataset(r, streams=folder_streams.get(str(r)), verify=verify) for r in roots]
        if streams is not None:
            present = set().union(*(ShardDataset.streams_of(p.records) for p in self.parts))
            unknown = sorted(set(streams) - present)
            if unknown:
                raise InvalidInputError(f"streams {unknown} are in none of {[str(r) for r in roots]} ({sorted(present)})")
            for p in self.parts:
                p.records = [r for r in p.records if r["stream"] in streams]
        sizes = {str(p.root): sorted({tuple(r["shapes"]["input"][1:3]) for r in p.records}) for p in self.parts}
        if len({hw for v in sizes.values() for hw in v}) > 1:
            raise ConfigError(f"dataset folders differ in image size (H, W): {sizes}; use folders of one size")
        self.records = [r for p in self.parts for r in p.records]
        self._starts = list(itertools.accumulate((len(p.records) for p in self.parts[:-1]), initial=0))

    streams_of = staticmethod(ShardDataset.streams_of)

    def __len__(self) -> int:
        return len(self.records)

    def _locate(self, i: int) -> tuple[ShardDataset, int]:
        """Global item index -> (its folder's dataset, index there)."""
        if not 0 <= i < len(self.records):
            raise ItemIndexError(f"item {i} out of range for {len(self.records)} items")
        k = bisect.bisect_right(self._starts, i) - 1
        return self.parts[k], i - self._starts[k]

    def load_item(self, i: int) -> PairItem:
        part, j = self._locate(int(i))
        return part.load_item(j)

    def __getitem__(self, key) -> dict[str, Any]:
        if isinstance(key, tuple):
            part, j = self._locate(int(key[0]))
            return part[(j, *key[1:])]
        part, j = self._locate(int(key))
        return part[j]


def open_datasets(roots: PathLike | Sequence[PathLike], verify: str = "header",
                  folder_streams: Mapping[str, Sequence[str]] | None = None) -> ShardDataset | ConcatShardDataset:
    """One dataset folder (a path) as a :class:`ShardDataset`, several (a list) as a :class:`ConcatShardDataset`;
    ``folder_streams`` as there."""
    single = isinstance(roots, (str, os.PathLike))
    if single and not folder_streams:
        return ShardDataset(roots, verify=verify)
    return ConcatShardDataset([roots] if single else list(roots), verify=verify, folder_streams=folder_streams)


class MixingBatchSampler:
    """Batches of keys for :class:`ShardDataset` (use as ``DataLoader(ds, batch_sampler=...)``).

    Each batch is a sequence batch with probability ``sequence_prob`` (items whose T == ``seq_len``,
    served whole) else an image batch (one random frame, T = 1, of any item). Every sample draws its
    stream by ``weights`` {stream: weight} (restricted, for sequence batches, to streams that have such
    sequences) and then an item uniformly. Deterministic in ``seed`` and :meth:`set_epoch`. All items
    must share one image size for batches to stack.
    """

    def __init__(self, dataset: ShardDataset, weights: Mapping[str, float], batch_size: int, num_batches: int,
                 sequence_prob: float = 0.25, seq_len: int | None = None, seed: int = 0):
        if batch_size < 1 or num_batches < 1:
            raise ConfigError(f"batch_size={batch_size} and num_batches={num_batches} must be >= 1")
        if not 0 <= sequence_prob <= 1:
            raise ConfigError(f"sequence_prob={sequence_prob} must be in [0, 1]")
        present = {r["stream"] for r in dataset.records}
        unknown = sorted(set(weights) - present)
        if unknown:
            raise ConfigError(f"weights name streams {unknown} that are not in the dataset (has {sorted(present)})")
        if any(not (math.isfinite(w) and w >= 0) for w in weights.values()) or sum(weights.values()) <= 0:
            raise ConfigError(f"weights {dict(weights)} must be finite, >= 0 and not all 0")
        self.dataset, self.batch_size, self.num_batches = dataset, int(batch_size), int(num_batches)
        self.sequence_prob, self.seed, self.epoch = float(sequence_prob), int(seed), 0
        self.weights = {k: float(v) for k, v in sorted(weights.items()) if v > 0}
        self.by_stream = {s: [i for i, r in enumerate(dataset.records) if r["stream"] == s] for s in self.weights}
        lens = [r["num_frames"] for r in dataset.records if r["num_frames"] > 1]
        self.seq_len = int(seq_len) if seq_len is not None else (max(set(lens), key=lens.count) if lens else None)
        self.seq_by_stream = {
            s: [i for i in idx if dataset.records[i]["num_frames"] == self.seq_len] for s, idx in self.by_stream.items()
        }
        self.seq_by_stream = {s: v for s, v in self.seq_by_stream.items() if v}
        if self.sequence_prob > 0 and not self.seq_by_stream:
            raise ConfigError(f"sequence_prob={sequence_prob} but no weighted stream has sequences of {self.seq_len} frames")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def _pick(self, rng, pools: dict[str, list[int]]) -> int:
        names = sorted(pools)
        w = np.array([self.weights[s] for s in names])
        s = names[int(rng.choice(len(names), p=w / w.sum()))]
        return pools[s][int(rng.integers(0, len(pools[s])))]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        recs = self.dataset.records
        for _ in range(self.num_batches):
            if self.seq_by_stream and rng.uniform() < self.sequence_prob:
                yield [(i, 0, self.seq_len) for i in (self._pick(rng, self.seq_by_stream) for _ in range(self.batch_size))]
            else:
                batch = []
                for _ in range(self.batch_size):
                    i = self._pick(rng, self.by_stream)
                    batch.append((i, int(rng.integers(0, recs[i]["num_frames"])), 1))
                yield batch


def iter_items(root: PathLike) -> Iterator[PairItem]:
    """Every item of a dataset folder, in manifest order (e.g. for :func:`streams.stream_report`)."""
    ds = ShardDataset(root)
    for i in range(len(ds)):
        yield ds.load_item(i)


__all__ = [
    "ConcatShardDataset",
    "MixingBatchSampler",
    "ShardDataset",
    "ShardPlan",
    "chunk_seed",
    "decode_item",
    "encode_item",
    "finalize_dataset",
    "generate_dataset",
    "iter_items",
    "manifest_hash",
    "open_datasets",
    "plan_shards",
    "read_shard_record",
    "stream_seconds",
    "write_shard",
]

