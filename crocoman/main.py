"""The ``crocoman`` command: LightningCLI over every task and DataModule; everything else is YAML."""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import ArgsType

from crocoman.cli import CrocomanCLI
from datamodules.base import ShardDataModule
from lightning_modules.base import CrocoTask


def cli(args: ArgsType = None, run: bool = True, **parser_kwargs: Any) -> CrocomanCLI:
    return CrocomanCLI(
        model_class=CrocoTask,
        datamodule_class=ShardDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs,
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> None:
    cli(args)


def build(configs: Sequence[str | Path], overrides: Mapping[str, Any] | None = None) -> CrocomanCLI:
    """Parse and instantiate configs exactly as ``crocoman fit -c ... --key=value`` does (defaults, type checks,
    ``-c`` composition), without running: tools that time or inspect a config's model and data
    (``crocoman-bench``) build them the way users' runs do. The trainer it builds is a placeholder (one CPU
    process, no logger or callbacks, so that a GPU or multi-node config builds anywhere); ``.config`` keeps
    every other trainer setting. A bad key or value raises ``argparse.ArgumentError`` naming it."""
    placeholder = {"trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.num_nodes": 1,
                   "trainer.strategy": "auto", "trainer.logger": False, "trainer.callbacks": []}
    settings = {**placeholder, **(overrides or {})}
    args = [arg for path in configs for arg in ("-c", str(path))]
    args += [f"--{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in settings.items()]
    return cli(args, run=False, exit_on_error=False)


if __name__ == "__main__":
    main()
