"""`crocoman-data`: command-line entry to the data tools (`synth` renders synthetic pair shards)."""

import argparse
import os
from pathlib import Path

from tools.synth.shards import write_pair_shards


def _synth(args: argparse.Namespace) -> None:
    write_pair_shards(
        args.out,
        num_groups=args.groups,
        image_size=args.size,
        cameras=args.cameras,
        times=args.times,
        seed=args.seed,
        workers=args.workers,
        groups_per_shard=args.groups_per_shard,
        val_groups=args.val_groups,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="crocoman-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser(
        "synth",
        help="render groups of a synthetic person (cameras x times) into WebDataset pair shards",
        description="Render procedural people into pair shards; the output depends on the seed and "
        "sizes only, never on --workers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    synth.add_argument("--out", type=Path, required=True, help="folder for train/, val/ and manifest.json")
    synth.add_argument("--groups", type=int, default=2000, help="training groups (one person each)")
    synth.add_argument("--val-groups", type=int, default=0, help="validation groups, other people")
    synth.add_argument("--size", type=int, default=128, help="crop side in pixels")
    synth.add_argument("--cameras", type=int, default=3, help="cameras per group (cross-view pairs)")
    synth.add_argument("--times", type=int, default=3, help="time steps per group (cross-pose pairs)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes")
    synth.add_argument("--groups-per-shard", type=int, default=100)
    synth.set_defaults(run=_synth)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
