"""The backbone sizes a config leaves out, read from the checkpoint it starts from.

A fine-tuning config names its ``pretrained`` checkpoint, and that checkpoint knows the sizes its encoder was
built with (``backbone.weights.recorded_architecture``: ours record them, CroCo v2 releases carry their
``croco_kwargs``). ``crocoman`` adds the sizes the configs and the command line leave out as command-line
arguments, before the parse that everything else sees: ``--print_config``, the run's ``config.yaml`` and the
model show the checkpoint's sizes. Sizes that are given stay as given, and the task refuses an encoder that
differs from its checkpoint (``FinetuneTask.load_pretrained``). With ``pretrained`` null, a file that is not
there yet or one that records nothing, the config's sizes apply, and ``CroCoNet``'s defaults (ViT-B/16 at
224 px) for the ones it leaves out.
"""

import json
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.utilities import rank_zero_info

from backbone.croco import CroCoNet
from backbone.weights import recorded_architecture
from crocoman.class_paths import names_subclass

BACKBONE_ARGUMENTS = "model.init_args.backbone.init_args"


def sizes_from_pretrained(parser: ArgumentParser, command: list[str]) -> list[str]:
    """``--model.init_args.backbone.init_args.<size>=<value>`` for each size that the command's ``pretrained``
    checkpoint records and the command (its ``-c`` files and arguments) does not give."""
    # What the command gives, without defaults; --print_config would print this partial parse and exit.
    given = parser.parse_args([arg for arg in command if arg.partition("=")[0] != "--print_config"], defaults=False)
    model = given.get(f"{given.get('subcommand')}.model")
    if not isinstance(model, Namespace):
        return []
    pretrained, backbone = model.get("init_args.pretrained"), model.get("init_args.backbone")
    if not (pretrained and isinstance(backbone, Namespace) and names_subclass(backbone.get("class_path"), CroCoNet)
            and Path(pretrained).exists()):
        return []
    recorded = recorded_architecture(pretrained)
    if recorded is None:
        rank_zero_info(f"{pretrained} does not record its backbone's sizes: the config's apply")
        return []
    sizes = backbone.get("init_args") or Namespace()
    return [f"--{BACKBONE_ARGUMENTS}.{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in recorded.items() if key not in sizes]
