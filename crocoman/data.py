"""`crocoman-data`: command-line entry to the data tools: `synth` renders synthetic pair shards,
`labelled` labelled body or hand shards, `body-models` smplx-loadable model files of the same
synthetic bodies (or, with `--convert`, of the official SMPL / MANO files without chumpy), `convert
<dataset>` a public dataset's files into shards."""

import argparse
import importlib
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from crocoman.convert import CONVERTERS
from crocoman.synth.bodymodel import write_body_models
from crocoman.synth.labelled import TASKS, write_labelled_shards
from crocoman.synth.shards import write_pair_shards


def _write(writer: Callable[..., object], args: argparse.Namespace) -> None:
    """Run a shard writer with the subcommand's options, which carry the writer's keyword names (their ``dest``)."""
    options = {name: value for name, value in vars(args).items() if name not in ("command", "run")}
    writer(options.pop("out"), **options)


def _body_models(args: argparse.Namespace) -> None:
    if not args.convert:
        write_body_models(args.out)
        return
    # only when converting official files
    from datamodules.safe_pickle import UnsafePickleError
    from crocoman.convert.chumpy_models import convert_body_model

    for source in args.convert:
        try:
            convert_body_model(source, args.out, args.model_type, args.gender, args.side)
        except (ValueError, UnsafePickleError) as error:  # a bad or hostile file: its message names it
            raise SystemExit(f"crocoman-data body-models: {error}") from error


class _ConverterHelp(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """A converter's docstring keeps its layout drawing; options show their defaults."""


def _convert(args: argparse.Namespace) -> None:
    """Parse the dataset's own options only now, so each converter imports only when it runs."""
    # imports torch: only when converting
    from crocoman.convert.common import add_common_arguments

    converter = importlib.import_module(CONVERTERS[args.dataset])
    parser = argparse.ArgumentParser(prog=f"crocoman-data convert {args.dataset}", description=converter.__doc__,
                                     formatter_class=_ConverterHelp)
    add_common_arguments(parser)
    converter.add_arguments(parser)
    converter.convert(parser.parse_args(args.options))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="crocoman-data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    rendering = argparse.ArgumentParser(add_help=False)  # what both synthetic writers take
    rendering.add_argument("--out", type=Path, required=True, help="folder for train/, val/ and manifest.json")
    rendering.add_argument("--size", dest="image_size", metavar="SIZE", type=int, default=128,
                           help="crop side in pixels")
    rendering.add_argument("--seed", type=int, default=0)
    rendering.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes")
    synth = commands.add_parser(
        "synth",
        help="render groups of a synthetic person (cameras x times) into WebDataset pair shards",
        description="Render procedural people into pair shards; the output depends on the seed and "
        "sizes only, never on --workers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[rendering],
    )
    synth.add_argument("--task", choices=TASKS, default="body", help="whole people, or bare hands (the hand model)")
    synth.add_argument("--groups", dest="num_groups", metavar="GROUPS", type=int, default=2000,
                       help="training groups (one person each)")
    synth.add_argument("--val-groups", type=int, default=0, help="validation groups, other people")
    synth.add_argument("--cameras", type=int, default=3, help="cameras per group (cross-view pairs)")
    synth.add_argument("--times", type=int, default=3, help="time steps per group (cross-pose pairs)")
    synth.add_argument("--groups-per-shard", type=int, default=100)
    synth.set_defaults(run=partial(_write, write_pair_shards))

    labelled = commands.add_parser(
        "labelled",
        help="render labelled crops (keypoints, SMPL/MANO parameters, vertices, DensePose or gesture)",
        description="Render one person (or hand) per sample into labelled shards for fine-tuning; the output "
        "depends on the seed and sizes only, never on --workers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[rendering],
    )
    labelled.add_argument("--task", choices=TASKS, required=True, help="whole bodies or bare hands")
    labelled.add_argument("--samples", dest="num_samples", metavar="SAMPLES", type=int, default=2000,
                          help="training samples")
    labelled.add_argument("--val-samples", type=int, default=0, help="validation samples, other people")
    labelled.add_argument("--samples-per-shard", type=int, default=200)
    labelled.add_argument("--no-vertices", dest="vertices", action="store_false",
                          help="store no mesh vertices (most of a body sample's bytes): fine-tuning with a body model "
                               "recomputes them from the stored parameters")
    labelled.set_defaults(run=partial(_write, write_labelled_shards))

    body_models = commands.add_parser(
        "body-models",
        help="write SMPL, SMPL-X and MANO model files of the synthetic bodies that smplx.create loads, or "
        "convert the official SMPL / MANO .pkl files (--convert) so they load without chumpy",
        description="Model files (smpl/SMPL_NEUTRAL.pkl, smplx/SMPLX_NEUTRAL.npz, mano/MANO_RIGHT.npz) whose "
        "meshes lie on the rendered synthetic people when posed with the labelled shards' parameters; "
        "for tests and demos without the licensed files. Load MANO with ext='npz', use_pca=False, "
        "flat_hand_mean=True. With --convert, the official files as downloaded from smpl.is.tue.mpg.de / "
        "mano.is.tue.mpg.de (Python 2 pickles holding chumpy objects, which do not load on Python 3.11+) are "
        "rewritten as smpl/SMPL_<GENDER>.{pkl,npz} or mano/MANO_<SIDE>.{pkl,npz} of plain arrays instead; "
        "they are read without running code from them.",
    )
    body_models.add_argument("--out", type=Path, required=True, help="root folder, as passed to smplx.create")
    body_models.add_argument("--convert", type=Path, nargs="+", metavar="FILE",
                             help="official SMPL / MANO .pkl files to convert (e.g. "
                                  "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl, MANO_RIGHT.pkl)")
    body_models.add_argument("--model-type", choices=("smpl", "mano"),
                             help="with --convert: the model in the files (default: from their content)")
    body_models.add_argument("--gender", choices=("neutral", "female", "male"),
                             help="with --convert: the SMPL gender (default: from the file name)")
    body_models.add_argument("--side", choices=("right", "left"),
                             help="with --convert: the MANO hand (default: from the file name)")
    body_models.set_defaults(run=_body_models)

    convert = commands.add_parser(
        "convert",
        help="convert a public dataset's files into pair or labelled shards (resumable, parallel)",
        description="Convert a dataset as downloaded into shards, a manifest.json and, with --preview N, a "
        "contact sheet. Options per dataset: crocoman-data convert <dataset> --help.",
    )
    convert.add_argument("dataset", choices=sorted(CONVERTERS))
    convert.add_argument("options", nargs=argparse.REMAINDER, help="--root, --out and the dataset's options")
    convert.set_defaults(run=_convert)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
