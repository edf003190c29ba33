"""``python -m simharmony.training --config C --out D`` (also under ``torchrun ... -m simharmony.training``):
the same as ``simharmony train``."""

import argparse
import sys

from simharmony.errors import SimHarmonyError
from simharmony.training.trainer import add_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simharmony.training")
    sub = parser.add_subparsers(dest="command")
    add_cli(sub)
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except SimHarmonyError as e:
        print(f"simharmony train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
