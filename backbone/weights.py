"""Pretrained weights in and out: CroCo v1/v2 releases, CroCo training checkpoints, our Lightning
checkpoints, and timm's RoPE ViT (``timm/models/eva.py``).

Every load compares names and shapes first and returns a ``KeyReport`` (also logged), so a wrong
file gives a readable list of what did not fit instead of an error from inside torch. Inside a
report, names are those of our Lightning module: ``backbone.<CroCo name>`` and ``head.proj.*``
(CroCo's ``prediction_head``).
"""

import argparse
import logging
import os
import pickle
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from backbone.croco import CroCoNet

log = logging.getLogger(__name__)

# CroCoNet's constructor defaults in naver/croco, which are also what the v1 ``CroCo.pth`` was trained with.
CROCO_DEFAULTS = {"img_size": 224, "patch_size": 16, "enc_embed_dim": 768, "enc_depth": 12, "enc_num_heads": 12,
                  "dec_embed_dim": 512, "dec_depth": 8, "dec_num_heads": 16, "mlp_ratio": 4, "pos_embed": "cosine"}
CROCO_TO_OURS = {"img_size": "img_size", "patch_size": "patch_size", "enc_embed_dim": "embed_dim",
                 "enc_depth": "depth", "enc_num_heads": "num_heads", "dec_embed_dim": "decoder_embed_dim",
                 "dec_depth": "decoder_depth", "dec_num_heads": "decoder_num_heads", "mlp_ratio": "mlp_ratio",
                 "pos_embed": "pos_embed"}
CROCO_TRAINING_ONLY = {"mask_ratio", "norm_layer"}  # masking is ours to choose; CroCo's norm is always LayerNorm(1e-6)
# The CroCoNet arguments that decide what the encoder's weights compute: a fine-tuning backbone must share them with
# its pretrained encoder. img_size may differ (RoPE positions follow the image; cosine tables are shape-checked at
# load), and so may the decoder's sizes: fine-tuning does not load the decoder.
ENCODER_ARCHITECTURE = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "pos_embed", "norm_eps")
ARCHITECTURE_KEY = "backbone_architecture"  # where our checkpoints record CroCoNet.architecture
ENCODER_KEYS = tuple("backbone." + k for k in ("patch_embed.", "enc_blocks.", "enc_norm.", "enc_pos_embed"))
DECODER_KEYS = tuple("backbone." + k for k in ("decoder_embed.", "mask_token", "dec_blocks.", "dec_norm.",
                                                "dec_pos_embed")) + ("head.",)


@dataclass
class KeyReport:
    """What a load did with every key; ``str()`` is the one-paragraph summary we log."""

    source: str = "<state dict>"
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # present in the file, deliberately not loaded (e.g. decoder)

    def __str__(self) -> str:
        def few(names: list[str]) -> str:
            return f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names else ""

        mismatched = [f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in self.shape_mismatched]
        return (f"{self.source}: {len(self.matched)} matched, {len(self.missing)} missing{few(self.missing)}, "
                f"{len(self.unexpected)} unexpected{few(self.unexpected)}, {len(mismatched)} shape mismatched"
                f"{few(mismatched)}, {len(self.ignored)} ignored{few(self.ignored)}.")

    def raise_if_incomplete(self, allowed_missing: Iterable[str] = ()) -> None:
        """Strict use: anything missing (except the given name prefixes), unexpected or mis-shaped is an error."""
        allowed = tuple(allowed_missing)
        if self.unexpected or self.shape_mismatched or any(not k.startswith(allowed) for k in self.missing):
            raise RuntimeError(f"checkpoint does not fit the model. {self} Check that the model was built with "
                               f"the checkpoint's sizes (see build_from_croco), or load with strict=False.")


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """Read without executing code: safetensors, or torch.load(weights_only=True).

    ``argparse.Namespace`` is allowed because CroCo's training script stores its ``args`` in every
    checkpoint; a namespace only holds values, so this does not open the door to arbitrary pickle.
    ``mmap``: tensors stay on disk until used, for a look at a checkpoint's other entries.
    """
    path = Path(path)
    if path.is_dir() and any(path.glob("*.distcp")):
        return _read_distributed(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.name.endswith(".safetensors"):
        return load_file(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        lines = str(error).splitlines()
        reason = next((line.strip().split(" was not")[0] for line in lines if "Unsupported global" in line), lines[0])
        raise ValueError(
            f"{path} needs arbitrary pickle to load ({reason}); we refuse to unpickle objects that can run code. "
            f"If you trust the file, convert it once: sd = torch.load(path, weights_only=False); "
            f"torch.save(sd['model'] if 'model' in sd else sd, 'weights.pth') (or safetensors.torch.save_file)."
        ) from error


def croco_kwargs_to_ours(croco_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """CroCo's ``croco_kwargs`` (missing ones take CroCo's defaults, i.e. v1) -> ``CroCoNet`` arguments."""
    unknown = set(croco_kwargs) - set(CROCO_TO_OURS) - CROCO_TRAINING_ONLY - {"norm_im2_in_dec"}
    if unknown or not croco_kwargs.get("norm_im2_in_dec", True):
        raise ValueError(f"unsupported croco_kwargs {sorted(unknown) or 'norm_im2_in_dec=False'} in {croco_kwargs}; "
                         f"our CroCoNet always normalises image-2 tokens in the decoder and knows "
                         f"{sorted(CROCO_TO_OURS)}")
    merged = {**CROCO_DEFAULTS, **croco_kwargs}
    return {ours: merged[theirs] for theirs, ours in CROCO_TO_OURS.items()}


def recorded_architecture(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``CroCoNet`` arguments a checkpoint was made with, where it records them: ours (every crocoman task
    writes ``CroCoNet.architecture`` into its checkpoints, an FSDP2 folder into its metadata file) and CroCo v2
    releases (``croco_kwargs``). None for the files that do not: plain state dicts, safetensors, the v1
    ``CroCo.pth``, CroCo training checkpoints (their ``args`` hold no sizes) and our checkpoints from before
    the record."""
    path = Path(path)
    if path.is_dir():
        metadata = path / _METADATA_FILENAME
        checkpoint = torch.load(metadata, map_location="cpu", weights_only=True) if metadata.is_file() else {}
    elif path.name.endswith(".safetensors"):
        return None
    else:
        checkpoint = read_checkpoint(path, mmap=True)
    if ARCHITECTURE_KEY in checkpoint:
        return dict(checkpoint[ARCHITECTURE_KEY])
    if "croco_kwargs" in checkpoint:
        return croco_kwargs_to_ours(checkpoint["croco_kwargs"])
    return None


def to_croco_checkpoint(backbone: CroCoNet, head: nn.Module) -> dict[str, Any]:
    """Our weights in the CroCo v2 release layout, so naver/croco code can open them (``head``: a
    ``heads.CompletionHead``, whose ``proj`` is CroCo's ``prediction_head``)."""
    if backbone.enc_norm.eps != 1e-6:
        raise ValueError(f"CroCo always uses LayerNorm eps 1e-6; this backbone has norm_eps={backbone.enc_norm.eps}")
    state = {k: v.squeeze(0) if k.endswith("pos_embed") else v for k, v in backbone.state_dict().items()}
    state.update({f"prediction_head.{k}": v for k, v in head.proj.state_dict().items()})
    croco_kwargs = {theirs: backbone.architecture[ours] for theirs, ours in CROCO_TO_OURS.items()}
    return {"model": state, "croco_kwargs": croco_kwargs}


def _read_distributed(folder: Path) -> dict[str, Any]:
    """A distributed checkpoint (the folder FSDP2 runs write as ``last.ckpt``), gathered into full tensors in
    this process: ``torch.distributed.checkpoint`` converts it to one plain file, read as any other."""
    with tempfile.TemporaryDirectory() as scratch:
        dcp_to_torch_save(folder, Path(scratch, "full.pt"))
        return torch.load(Path(scratch, "full.pt"), map_location="cpu", weights_only=True)


def _read(path_or_state: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if isinstance(path_or_state, Mapping):
        return path_or_state, "<state dict>"
    return read_checkpoint(path_or_state), str(path_or_state)


def _our_names(checkpoint: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    """Any supported layout -> ``backbone.*`` / ``head.*`` names (Lightning's ``state_dict`` already has them)."""
    state = checkpoint.get("state_dict", checkpoint.get("model", checkpoint))
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{source}: no state dict found under 'state_dict', 'model' or at the top level "
                         f"(top-level keys: {sorted(checkpoint)[:8]})")
    if any(k.startswith(("backbone.", "head.")) for k in state):
        return dict(state)
    return {("head.proj." + k.removeprefix("prediction_head.") if k.startswith("prediction_head.")
             else "backbone." + k): v for k, v in state.items()}


def _compare(own: Mapping[str, Tensor], state: Mapping[str, Tensor], source: str) -> tuple[KeyReport, dict]:
    """Names and shapes checked before anything is copied; CroCo's (N, D) cosine buffers fit our (1, N, D)."""
    report, loadable = KeyReport(source=source), {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        if key.endswith("pos_embed") and value.shape == own[key].shape[1:]:
            value = value[None]
        if value.shape == own[key].shape:
            loadable[key] = value
        else:
            report.shape_mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
    report.matched = list(loadable)
    report.missing = [k for k in own if k not in state]
    return report, loadable


def load_croco(path_or_state: str | os.PathLike | Mapping[str, Any], backbone: CroCoNet,
               head: nn.Module | None = None, strict: bool = False) -> KeyReport:
    """Load a CroCo v1/v2 release, CroCo training checkpoint, plain state dict or our Lightning checkpoint.

    Without a head, ``prediction_head`` weights are reported as unexpected. With ``strict`` nothing is
    copied unless everything fits.
    """
    checkpoint, source = _read(path_or_state)
    target = nn.ModuleDict({"backbone": backbone} | ({"head": head} if head is not None else {}))
    report, loadable = _compare(target.state_dict(), _our_names(checkpoint, source), source)
    log.info("load_croco: %s", report)
    if strict:
        report.raise_if_incomplete()
    target.load_state_dict(loadable, strict=False)
    return report


def load_encoder(path_or_state: str | os.PathLike | Mapping[str, Any], backbone: CroCoNet) -> KeyReport:
    """Encoder weights only, for fine-tuning from any supported file; decoder keys are ``ignored``."""
    checkpoint, source = _read(path_or_state)
    state = _our_names(checkpoint, source)
    own = {k: v for k, v in nn.ModuleDict({"backbone": backbone}).state_dict().items() if k.startswith(ENCODER_KEYS)}
    report, loadable = _compare(own, {k: v for k, v in state.items() if not k.startswith(DECODER_KEYS)}, source)
    report.ignored = [k for k in state if k.startswith(DECODER_KEYS)]
    log.info("load_encoder: %s", report)
    backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in loadable.items()}, strict=False)
    return report


def _timm_rope_order(head_dim: int, grid_indexing: str, rotate_half: bool) -> Tensor:
    """For each timm head channel, our channel that timm's RoPE rotates by the same axis and frequency.

    Ours: [row half | column half], each [first of pairs | second of pairs]. timm: per-axis bands in
    ``grid_indexing`` order ('xy' = column first), pairs interleaved (2i, 2i+1) or split in halves.
    """
    bands, order = head_dim // 4, []
    for channel in range(head_dim):
        if rotate_half:
            second, slot = divmod(channel, 2 * bands)
        else:
            slot, second = divmod(channel, 2)
        axis, band = divmod(slot, bands)
        is_column = (axis == 0) == (grid_indexing == "xy")
        order.append(2 * bands * is_column + bands * second + band)
    return torch.tensor(order)


def export_timm(backbone: CroCoNet, rope_grid_indexing: str = "xy",
                rope_rotate_half: bool = False) -> dict[str, Tensor]:
    """The encoder as a state dict for timm's ``Eva`` (e.g. ``vit_base_patch16_rope_224``).

    timm's RoPE orders the head channels differently from CroCo's (axis order, interleaved pairs).
    Query/key channels are permuted per head to match (pass the timm model's ``rope_grid_indexing`` /
    ``rope_rotate_half``; its ``rope_temperature`` must equal our base, 100), so a timm model without
    class token computes our encoder's tokens exactly. With timm's class token (the presets) that new,
    untrained token joins attention: a starting point for fine-tuning, not an identical model. Layer
    scale ``gamma_*`` is exported as ones, which is what our blocks compute (timm's presets start at 1e-5).
    """
    state = {}
    for key, value in backbone.state_dict().items():
        if key.startswith("enc_blocks."):
            state["blocks." + key.removeprefix("enc_blocks.")] = value.clone()
        elif key.startswith(("patch_embed.", "enc_norm.", "enc_pos_embed")):
            state[key.replace("enc_norm.", "norm.").replace("enc_pos_embed", "pos_embed")] = value.clone()
    for i, block in enumerate(backbone.enc_blocks):
        for gamma in ("gamma_1", "gamma_2"):
            state[f"blocks.{i}.{gamma}"] = torch.ones(backbone.embed_dim)
        if backbone.enc_rope is not None:
            heads, head_dim = block.attn.num_heads, backbone.embed_dim // block.attn.num_heads
            order = _timm_rope_order(head_dim, rope_grid_indexing, rope_rotate_half)
            for name in ("weight", "bias"):
                qkv = state[f"blocks.{i}.attn.qkv.{name}"].view(3, heads, head_dim, -1)
                qkv[:2] = qkv[:2, :, order]
    return state


def load_into_timm(state: Mapping[str, Tensor], timm_model: nn.Module) -> KeyReport:
    """Load ``export_timm`` output; timm-only keys (class token, head) stay as timm made them and show as missing."""
    own = timm_model.state_dict()
    identity_scale = [k for k, v in state.items() if k not in own and ".gamma_" in k and bool((v == 1).all())]
    report, loadable = _compare(own, {k: v for k, v in state.items() if k not in identity_scale}, "<timm export>")
    report.ignored = identity_scale
    log.info("load_into_timm: %s", report)
    timm_model.load_state_dict(loadable, strict=False)
    return report
