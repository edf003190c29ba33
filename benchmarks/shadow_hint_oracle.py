"""How much the shadow hint alone says: the simplest use of it, ``input x (1 - k hint)``, on the shadow items.

    python benchmarks/shadow_hint_oracle.py --train data/default --holdout data/holdout

``k`` is fitted by least squares on the training items' shadow regions only, then applied to the holdout's.
Prints, per dataset, the shadow region's MSE over the input's (the region of ``eval_models.py
--shadow-region``: the item mask outside the object's own mask, where target and input differ) and the share
of the pixels the target darkens by more than 0.03 (luma) that the hint covers (> 0.2). A reference for what the
enhancer's learned shadow head should at least reach; not a shipped method.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from simharmony.data.shards import ShardDataset

LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


def region(it) -> np.ndarray:
    differs = np.abs(it.target - it.input).max(-1) > 1.5 / 255
    return (it.mask > 0.5) & (it.asset_mask < 0.5) & differs


def fit_k(items) -> float:
    num = den = 0.0
    for it in items:
        r = region(it)
        h, x, y = it.shadow_hint[r][:, None], it.input[r], it.target[r]
        num += float(((x - y) * h * x).sum())  # y ~ x (1 - k h)  =>  x - y = k h x
        den += float(((h * x) ** 2).sum())
    return num / den


def report(name: str, items, k: float) -> None:
    se_in = se_k = covered = darker = 0.0
    for it in items:
        r = region(it)
        out = it.input * (1 - k * it.shadow_hint[..., None])
        se_in += float(((it.input - it.target) ** 2)[r].sum())
        se_k += float(((out - it.target) ** 2)[r].sum())
        drop = ((it.input - it.target) @ LUMA > 0.03) & (it.asset_mask < 0.5)
        covered += float((it.shadow_hint[drop] > 0.2).sum())
        darker += float(drop.sum())
    print(f"{name}: {len(items)} shadow items, k {k:.3f}: shadow region MSE / input's {se_k / se_in:.3f}; "
          f"hint covers {covered / darker:.1%} of the darkened pixels")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", default="data/default")
    p.add_argument("--holdout", default="data/holdout")
    args = p.parse_args()
    load = lambda root: [ds.load_item(i) for ds in [ShardDataset(root, streams=["shadow"])] for i in range(len(ds))]
    train = load(args.train)
    k = fit_k(train)
    report(args.train, train, k)
    report(args.holdout, load(args.holdout), k)


if __name__ == "__main__":
    main()
