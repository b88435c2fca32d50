"""``crocoman-export``: a trained checkpoint as a CroCo v2 release file or a timm RoPE-ViT state dict.

The network is rebuilt from the run's ``config.yaml`` (LightningCLI writes it next to the logs)
and strictly loaded, so a wrong config/checkpoint pair fails with the key report instead of
exporting something half-initialised.
"""

import argparse
from pathlib import Path

import torch
import yaml
from lightning.pytorch.cli import instantiate_class
from safetensors.torch import save_file

from backbone.weights import export_timm, load_croco, to_croco_checkpoint


def export(argv: list[str] | None = None) -> Path:
    """Write the exported encoder and return its path."""
    parser = argparse.ArgumentParser(prog="crocoman-export", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="the run's config.yaml")
    parser.add_argument("--checkpoint", required=True, type=Path, help="a .ckpt of that run")
    parser.add_argument("--format", choices=("croco", "timm"), required=True,
                        help="croco: {'model', 'croco_kwargs'} .pth for naver/croco code; "
                             "timm: encoder .safetensors for timm's vit_*_patch16_rope models")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    for option, path in ("--config", args.config), ("--checkpoint", args.checkpoint):
        if not path.exists():
            parser.error(f"{option} {path}: not found")

    model = (yaml.safe_load(args.config.read_text()) or {}).get("model", {}).get("init_args", {})
    if not {"backbone", "head"} <= model.keys():
        parser.error(f"--config {args.config}: no model.init_args.backbone and head: give the config.yaml the run "
                     f"wrote beside its logs")
    backbone = instantiate_class((), model["backbone"])
    head = instantiate_class((), model["head"])
    head.bind(backbone)
    try:
        report = load_croco(args.checkpoint, backbone, head, strict=True)
    except (ValueError, RuntimeError) as error:  # unreadable, or not this config's network: say so, no traceback
        parser.exit(1, f"crocoman-export: {args.checkpoint} with {args.config}: {error}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "croco":
        torch.save(to_croco_checkpoint(backbone, head), args.out)
    else:
        save_file({k: v.contiguous() for k, v in export_timm(backbone).items()}, args.out)
    print(f"crocoman-export: {report.source} ({len(report.matched)} tensors) -> {args.out} ({args.format})")
    return args.out


def main(argv: list[str] | None = None) -> None:
    """The ``crocoman-export`` entry point (console scripts exit with what it returns, so: nothing)."""
    export(argv)


if __name__ == "__main__":
    main()
