"""Shards: round trip, resumable generation, corruption detection, manifest hash, i/n split, sampler."""

import json
import shutil

import numpy as np
import pytest

from simharmony.data import shards as S
from simharmony.data.item import PairItem
from simharmony.data.registry import STREAMS, tiny_configs
from simharmony.errors import (
    ConfigError,
    CorruptFileError,
    FileFormatError,
    InvalidInputError,
    MissingFileError,
    ShapeMismatchError,
)

COUNTS = {"isp": 5, "rpb": 3}
SEED = 4


def _gen(folder, **kw):
    args = {"streams": COUNTS, "seed": SEED, "shard_size": 2, "configs": tiny_configs(), "progress": False}
    args.update(kw)
    return S.generate_dataset(folder, **args)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    return folder, _gen(folder)


def _ids(folder):
    return [json.loads(line)["id"] for line in (folder / "manifest.jsonl").read_text().splitlines()]


def test_round_trip_quantisation(tmp_path):
    rng = np.random.default_rng(0)
    T, H, W = 2, 6, 7
    flow = rng.normal(0, 3, (T, H, W, 2)).astype(np.float32)
    flow[0] = 0
    valid = rng.uniform(size=(T, H, W)) > 0.5
    valid[0] = False
    depth = rng.uniform(1, 80, (T, H, W)).astype(np.float32)
    depth[0, 0, 0] = np.inf
    item = PairItem(rng.uniform(size=(T, H, W, 3)), rng.uniform(size=(T, H, W, 3)), rng.uniform(size=(T, H, W)),
                    depth, flow, valid, {"stream": "isp", "params": {"a": 1}, "seed": 3, "scene_id": "x", "k": [1]})
    rec = S.write_shard(tmp_path, "isp-00000", [("isp-0000000", item)])
    assert S.read_shard_record(tmp_path, "isp-00000") == rec
    from safetensors.numpy import load_file

    arrays = {k.split("/")[1]: v for k, v in load_file(str(tmp_path / "isp-00000.safetensors")).items()}
    assert arrays["input"].dtype == np.uint8 and arrays["depth"].dtype == np.float16
    back = S.decode_item(arrays, item.metadata)
    for name in ("input", "target", "mask"):
        np.testing.assert_allclose(getattr(back, name), getattr(item, name), atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(back.depth, item.depth, rtol=1e-3)
    np.testing.assert_allclose(back.flow, item.flow, atol=5e-3)
    np.testing.assert_array_equal(back.flow_valid, item.flow_valid)
    assert json.loads(rec["items"][0])["sha256"] == S.arrays_sha256(arrays)


def test_asset_mask_round_trip_and_batches(tmp_path):
    """The optional asset_mask is validated, sliced, stored and read back; items with and without one stack."""
    import torch

    rng = np.random.default_rng(1)
    T, H, W = 2, 5, 6
    flow, valid = np.zeros((T, H, W, 2), np.float32), np.zeros((T, H, W), bool)
    md = {"stream": "shadow", "params": {}, "seed": 0, "scene_id": "x"}

    def make(asset):
        return PairItem(rng.uniform(size=(T, H, W, 3)), rng.uniform(size=(T, H, W, 3)), np.ones((T, H, W)),
                        np.ones((T, H, W)), flow, valid, md, asset_mask=asset)

    asset = (rng.uniform(size=(T, H, W)) > 0.5).astype(np.float32)
    with_asset, without = make(asset), make(None)
    assert with_asset.frames(1).asset_mask.shape == (1, H, W) and without.frames(1).asset_mask is None
    assert with_asset.model_mask() is with_asset.asset_mask and without.model_mask() is None
    assert with_asset.model_mask(maskless_streams=()) is with_asset.mask
    with pytest.raises(ShapeMismatchError, match="asset_mask"):
        make(asset[:1])
    with pytest.raises(InvalidInputError, match="asset_mask"):
        make(asset * 2)
    S.write_shard(tmp_path / "shards", "shadow-00000", [("shadow-0000000", with_asset), ("shadow-0000001", without)])
    from simharmony.utils.io import save_yaml

    save_yaml(tmp_path / "generation.yaml", {"seed": 0, "shard_size": 2, "streams": {"shadow": 2}})
    S.finalize_dataset(tmp_path)
    ds = S.ShardDataset(tmp_path, verify="full")
    np.testing.assert_array_equal(ds.load_item(0).asset_mask, asset)
    assert ds.load_item(1).asset_mask is None
    batch = {k: (torch.stack([ds[0][k], ds[1][k]]) if torch.is_tensor(ds[0][k]) else [ds[0][k], ds[1][k]]) for k in ds[0]}
    assert batch["has_asset_mask"].tolist() == [True, False] and not batch["asset_mask"][1].any()
    shown, given = S.batch_model_mask(batch, ("shadow",))
    assert given.tolist() == [True, False] and torch.equal(shown[0], torch.from_numpy(asset)) and not shown[1].any()
    shown, given = S.batch_model_mask(batch, ())
    assert given.all() and torch.equal(shown, batch["mask"])


def test_dataset_reads_back_items(full):
    folder, rec = full
    assert rec["complete"] and rec["num_items"] == 8 and rec["streams"]["isp"]["items"] == 5
    ds = S.ShardDataset(folder, verify="full")
    assert len(ds) == 8 and ds.version == rec["version"]
    assert sorted(_ids(folder)) == _ids(folder) and len(set(_ids(folder))) == 8
    # the stored item equals the regenerated one (up to uint8 quantisation)
    first_isp = next(STREAMS["isp"][1](tiny_configs()["isp"], S.chunk_seed(SEED, "isp", 0), 1))
    i = _ids(folder).index("isp-0000000")
    got = ds.load_item(i)
    np.testing.assert_allclose(got.input, first_isp.input, atol=0.5 / 255 + 1e-6)
    assert got.metadata == first_isp.metadata
    sample = ds[i]
    assert sample["input"].shape == tuple(first_isp.input.shape) and sample["id"] == "isp-0000000"
    assert ds[(i, 0, 1)]["input"].shape[0] == 1
    assert len(S.ShardDataset(folder, streams=["rpb"])) == 3


def test_manifest_hash_stable_and_content_sensitive(full, tmp_path):
    folder, rec = full
    again = _gen(tmp_path / "again")
    assert again["version"] == rec["version"]
    other = _gen(tmp_path / "other", seed=SEED + 1)
    assert other["version"] != rec["version"]
    lines = (folder / "manifest.jsonl").read_text().splitlines()
    assert S.manifest_hash(lines) == rec["version"] == S.manifest_hash(lines[::-1])


def test_resume_after_interruption(full, tmp_path, monkeypatch):
    folder = tmp_path / "ds"
    cls, gen = STREAMS["isp"]
    calls = {"n": 0}

    def flaky(config, seed, count=None):
        for item in gen(config, seed, count):
            calls["n"] += 1
            if calls["n"] == 4:  # dies inside the second isp shard
                raise KeyboardInterrupt("simulated kill")
            yield item

    monkeypatch.setitem(STREAMS, "isp", (cls, flaky))
    with pytest.raises(KeyboardInterrupt):
        _gen(folder)
    monkeypatch.setitem(STREAMS, "isp", (cls, gen))
    shard_dir = folder / "shards"
    assert S.read_shard_record(shard_dir, "isp-00000") is not None
    assert not (shard_dir / "isp-00001.safetensors").exists()
    # a kill between the data and its record, and a temp file of a killed write
    shutil.copy(full[0] / "shards" / "isp-00001.safetensors", shard_dir / "isp-00001.safetensors")
    with open(shard_dir / "isp-00001.safetensors", "r+b") as f:
        f.truncate(100)
    (shard_dir / ".isp-00002.safetensors.abc.tmp.safetensors").write_bytes(b"junk")
    before = (shard_dir / "isp-00000.safetensors").stat().st_mtime_ns
    rec = _gen(folder)
    assert (shard_dir / "isp-00000.safetensors").stat().st_mtime_ns == before  # kept, not regenerated
    assert not list(shard_dir.glob(".*tmp*"))
    assert rec["complete"] and rec["version"] == full[1]["version"]
    assert _ids(folder) == _ids(full[0])
    S.ShardDataset(folder, verify="full")


def test_corruption_is_detected(full, tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(full[0], folder)
    shard = folder / "shards" / "rpb-00000.safetensors"
    data = bytearray(shard.read_bytes())
    # same size, one flipped byte near the end (inside item data): the header check passes, the sha does not
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    ds = S.ShardDataset(folder)
    i = [r["shard"] for r in ds.records].index("rpb-00000")
    bad = [k for k, r in enumerate(ds.records) if r["shard"] == "rpb-00000"]
    with pytest.raises(CorruptFileError):
        for k in bad:
            ds.load_item(k)
    with pytest.raises(CorruptFileError, match="sha256"):
        S.ShardDataset(folder, verify="full")
    assert i in bad
    # truncated
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CorruptFileError, match="truncated"):
        S.ShardDataset(folder)
    # missing shard
    shard.unlink()
    with pytest.raises(MissingFileError):
        S.ShardDataset(folder)
    # manifest edited
    folder2 = tmp_path / "m"
    shutil.copytree(full[0], folder2)
    man = folder2 / "manifest.jsonl"
    man.write_text(man.read_text().replace('"seed":', '"seed": ', 1))
    with pytest.raises(CorruptFileError, match="manifest hash"):
        S.ShardDataset(folder2)
    with pytest.raises(MissingFileError):
        S.ShardDataset(tmp_path / "nothing")


def test_split_i_of_n_disjoint_and_covering(full, tmp_path):
    plans = [S.plan_shards(COUNTS, 2, (i, 3)) for i in range(3)]
    names = [p.name for ps in plans for p in ps]
    assert len(names) == len(set(names)) == len(S.plan_shards(COUNTS, 2))
    ids = [x for ps in plans for p in ps for x in p.item_ids()]
    assert sorted(ids) == sorted(_ids(full[0]))
    parts = [tmp_path / f"part{i}" for i in range(2)]
    for i, part in enumerate(parts):
        rec = _gen(part, shard=(i, 2))
        assert not rec["complete"]
    a, b = set(_ids(parts[0])), set(_ids(parts[1]))
    assert not a & b and a | b == set(_ids(full[0]))
    merged = tmp_path / "merged"
    shutil.copytree(parts[0], merged)
    for f in (parts[1] / "shards").iterdir():
        shutil.copy(f, merged / "shards" / f.name)
    rec = S.finalize_dataset(merged)
    assert rec["complete"] and rec["version"] == full[1]["version"]



def test_parallel_workers_make_the_same_dataset(full, tmp_path):
    """Two worker processes give the same items as one; a chunk that fails in a worker is raised here, and
    the shards the workers finished stay for the next run."""
    rec = _gen(tmp_path / "par", workers=2)
    assert rec["complete"] and rec["version"] == full[1]["version"]
    assert _ids(tmp_path / "par") == _ids(full[0])
    broken = tmp_path / "broken" / "shards"
    (broken / "isp-00001.safetensors").mkdir(parents=True)  # the shard's file cannot be written
    with pytest.raises(OSError):
        _gen(tmp_path / "broken", workers=2)
    (broken / "isp-00001.safetensors").rmdir()
    kept = {f.name: f.stat().st_mtime_ns for f in broken.glob("*.safetensors") if S.read_shard_record(broken, f.stem)}
    assert "isp-00001.safetensors" not in kept
    rec = _gen(tmp_path / "broken", workers=2)
    assert rec["complete"] and rec["version"] == full[1]["version"]
    assert not list(broken.glob(".*tmp*"))
    assert all((broken / name).stat().st_mtime_ns == t for name, t in kept.items())


def _tqdm_uses_a_multiprocessing_lock() -> bool:
    from tqdm.auto import tqdm

    tqdm(range(1), disable=True)  # an instance makes the lock, as the streams' progress bars do
    lock = tqdm.get_lock()
    return any(type(x).__module__.startswith("multiprocessing") for x in getattr(lock, "locks", [lock]))


def test_workers_make_no_multiprocessing_locks():
    """A worker killed on Ctrl-C cannot unregister a semaphore it made; tqdm's default lock is one."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=S._init_worker, initargs=(ctx.Queue(), 1)) as pool:
        assert not pool.submit(_tqdm_uses_a_multiprocessing_lock).result()
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:  # the test can fail: without the initializer it is one
        assert pool.submit(_tqdm_uses_a_multiprocessing_lock).result()


def test_generation_bad_input(full, tmp_path):
    with pytest.raises(ConfigError, match="other settings"):
        _gen(full[0], seed=SEED + 7)
    with pytest.raises(ConfigError, match="unknown streams"):
        _gen(tmp_path / "x", streams={"nope": 1})
    with pytest.raises(ConfigError):
        _gen(tmp_path / "y", shard=(2, 2))
    with pytest.raises(ConfigError):
        _gen(tmp_path / "z", shard_size=0)
    with pytest.raises(ConfigError, match="workers"):
        _gen(tmp_path / "w", workers=0)


def test_unwritable_or_full_output_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(FileFormatError, match="cannot create output folder"):
        _gen(blocker / "out")
    # tests run as root, for whom permissions never deny: simulate a read-only folder
    import simharmony.utils.io as io_mod

    monkeypatch.setattr(io_mod.os, "access", lambda *a, **k: False)
    with pytest.raises(FileFormatError, match="not writable"):
        _gen(tmp_path / "ro")
    monkeypatch.undo()

    # a full disk while a shard is written: clear error, nothing half-written, and a later run completes
    import errno

    import safetensors.numpy as stn

    real_save, calls = stn.save_file, []

    def full_disk(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # the second shard hits a full disk
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(stn, "save_file", full_disk)
    out = tmp_path / "full_disk"
    with pytest.raises(FileFormatError, match="disk full"):
        _gen(out, streams={"isp": 4})
    monkeypatch.undo()
    leftovers = sorted(p.name for p in (out / "shards").iterdir() if not p.name.endswith(".time.yaml"))
    assert leftovers == ["isp-00000.safetensors", "isp-00000.yaml"], leftovers  # only the finished shard
    record = _gen(out, streams={"isp": 4})
    assert record["num_items"] == 4 and len(_ids(out)) == 4


def test_mixing_sampler(full):
    import torch

    ds = S.ShardDataset(full[0])
    sampler = S.MixingBatchSampler(ds, {"isp": 1.0, "rpb": 0.0}, batch_size=3, num_batches=20, sequence_prob=0.5, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler)
    kinds = set()
    for batch in loader:
        assert set(batch["stream"]) == {"isp"}
        T = batch["input"].shape[1]
        kinds.add(T)
        assert batch["input"].shape[0] == 3 and T in (1, sampler.seq_len)
        assert batch["flow_valid"].dtype == torch.bool and not batch["flow_valid"][:, 0].any()
    assert kinds == {1, sampler.seq_len}
    assert [b for b in sampler] == [b for b in sampler]  # deterministic
    with pytest.raises(ConfigError):
        S.MixingBatchSampler(ds, {"shadow": 1.0}, 2, 2)


def test_concat_datasets_read_as_one(full, tmp_path):
    folder, _ = full
    other = tmp_path / "other"
    _gen(other, streams={"rpb": 2}, seed=SEED + 1)
    a, b = S.ShardDataset(folder), S.ShardDataset(other)
    both = S.open_datasets([folder, other])
    assert isinstance(S.open_datasets(folder), S.ShardDataset)
    assert len(both) == len(a) + len(b) == 10 and both.records == a.records + b.records
    # index len(a) + j is the second folder's item j, whole or as a frame range
    for j in range(len(b)):
        np.testing.assert_array_equal(both[len(a) + j]["input"].numpy(), b[j]["input"].numpy())
        assert both[(len(a) + j, 0, 1)]["input"].shape[0] == 1
    assert both.load_item(0).metadata == a.load_item(0).metadata
    assert S.ConcatShardDataset([folder, other], streams=["rpb"]).records == [
        r for r in a.records + b.records if r["stream"] == "rpb"]
    # one folder's rpb items replace the other's: only that folder is filtered
    replaced = S.open_datasets([folder, other], folder_streams={str(folder): ["isp"]})
    assert replaced.records == [r for r in a.records if r["stream"] == "isp"] + b.records
    np.testing.assert_array_equal(replaced[len(replaced) - 1]["input"].numpy(), b[len(b) - 1]["input"].numpy())
    assert S.open_datasets(folder, folder_streams={str(folder): ["rpb"]}).records == [
        r for r in a.records if r["stream"] == "rpb"]
    with pytest.raises(ConfigError, match="not among"):
        S.open_datasets([folder, other], folder_streams={str(tmp_path / "elsewhere"): ["isp"]})
    with pytest.raises(InvalidInputError, match="shadow"):
        S.open_datasets([folder, other], folder_streams={str(other): ["shadow"]})
    with pytest.raises(IndexError):
        both[10]
    # a sampler over the pair draws from both folders
    sampler = S.MixingBatchSampler(both, {"rpb": 1.0}, batch_size=4, num_batches=20, sequence_prob=0.0, seed=0)
    drawn = {i for batch in sampler for i, _, _ in batch}
    assert drawn & set(range(len(a))) and drawn & set(range(len(a), len(both)))


def test_concat_rejects_mixed_sizes_and_empty(full, tmp_path):
    import dataclasses

    folder, _ = full
    cfg = tiny_configs()["rpb"]
    wider = dataclasses.replace(cfg, scene=dataclasses.replace(cfg.scene, width=cfg.scene.width + 16))
    other = tmp_path / "wider"
    _gen(other, streams={"rpb": 1}, configs={"rpb": wider})
    with pytest.raises(ConfigError, match="image size"):
        S.open_datasets([folder, other])
    with pytest.raises(ConfigError, match="at least one"):
        S.ConcatShardDataset([])
