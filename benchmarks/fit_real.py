"""How well saved enhancers fit the real-image *training* streams (for choosing between training runs
without looking at held-out images): per model, the mean fMSE in the mask (0-255 scale) of input and
output on evenly spaced ``real_isp`` and ``real_rpb`` items of a dataset folder, and the share of items
the model improves. Each item is one frame through a fresh ``Harmonizer`` stream, mask given.

    python benchmarks/fit_real.py runs/v7 runs/real/final                  # data/real, 20 items per stream
    python benchmarks/fit_real.py runs/real/final --data data/real --items 40
    python benchmarks/fit_real.py weights/enhancer --data data/real_objects_dev --streams real_isp --items 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from simharmony.data.shards import ShardDataset
from simharmony.harmonizer import Harmonizer
from simharmony.metrics import fmse


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="model folders (Enhancer.save_pretrained)")
    p.add_argument("--data", default="data/real", help="a dataset folder with real_isp / real_rpb items")
    p.add_argument("--items", type=int, default=20, help="items per stream, evenly spaced")
    p.add_argument("--streams", nargs="+", default=["real_isp", "real_rpb"], help="streams of --data to fit")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.models:
        h = Harmonizer.from_pretrained(name)
        line = [name]
        for stream in args.streams:
            ds = ShardDataset(args.data, streams=[stream])
            rows = []
            for i in range(0, len(ds), max(1, len(ds) // args.items)):
                it = ds.load_item(i)
                h.reset()
                out = np.asarray(h.enhance(it.input[0], mask=it.mask[0]))
                rows.append((fmse(it.input[0], it.target[0], it.mask[0]), fmse(out, it.target[0], it.mask[0])))
            r = np.array(rows)
            line.append(f"{stream} fMSE {r[:, 0].mean():.1f} -> {r[:, 1].mean():.1f}, "
                        f"better on {100 * (r[:, 1] < r[:, 0]).mean():.0f} % of {len(r)}")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
