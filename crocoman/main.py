"""The ``crocoman`` command: LightningCLI over every task and DataModule; everything else is YAML."""

from lightning.pytorch.cli import ArgsType

from datamodules.base import ShardDataModule
from lightning_modules.base import CrocoTask
from crocoman.cli import CrocomanCLI


def main(args: ArgsType = None) -> None:
    CrocomanCLI(
        model_class=CrocoTask,
        datamodule_class=ShardDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
