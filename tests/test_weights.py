"""Weight loading and export: every checkpoint layout we accept, shape mismatches, pickle refusal, timm."""

import argparse

import pytest
import timm
import torch
from safetensors.torch import save_file

from backbone.croco import IMAGENET_MEAN, IMAGENET_STD, CroCoNet
from backbone.weights import (
    KeyReport,
    croco_kwargs_to_ours,
    export_timm,
    load_croco,
    load_encoder,
    load_into_timm,
    read_checkpoint,
    to_croco_checkpoint,
)
from heads.completion import CompletionHead, build_from_croco

SMALL = {"img_size": 64, "embed_dim": 64, "depth": 2, "num_heads": 2, "decoder_embed_dim": 64, "decoder_depth": 2,
         "decoder_num_heads": 2}
SMALL_CROCO_KWARGS = {"img_size": 64, "patch_size": 16, "enc_embed_dim": 64, "enc_depth": 2, "enc_num_heads": 2,
                      "dec_embed_dim": 64, "dec_depth": 2, "dec_num_heads": 2, "mlp_ratio": 4, "pos_embed": "RoPE100",
                      "mask_ratio": 0.9, "norm_im2_in_dec": True}


class NotAWeight:
    """Stands for any class a malicious or careless checkpoint could pickle."""


def make_model(**overrides) -> tuple[CroCoNet, CompletionHead]:
    """A small network with every parameter random, so a weight that is not copied shows up in outputs."""
    backbone = CroCoNet(**{**SMALL, **overrides}).eval()
    head = CompletionHead()
    head.bind(backbone)
    with torch.no_grad():
        for param in [*backbone.parameters(), *head.parameters()]:
            param.normal_(0, 0.1)
    return backbone, head


def croco_state(backbone: CroCoNet, head: CompletionHead) -> dict[str, torch.Tensor]:
    """The state dict naver/croco's CroCoNet would hold: our names plus ``prediction_head``, (N, D) cosine buffers."""
    state = {k: v.squeeze(0) if k.endswith("pos_embed") else v for k, v in backbone.state_dict().items()}
    return {**state, "prediction_head.weight": head.proj.weight, "prediction_head.bias": head.proj.bias}


def completion(backbone: CroCoNet, head: CompletionHead) -> torch.Tensor:
    """Masked image 1 completed from image 2: encoder, decoder and head all take part."""
    generator = torch.Generator().manual_seed(0)
    images1, images2 = torch.rand(2, 3, 64, 64, generator=generator), torch.rand(2, 3, 64, 64, generator=generator)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 1:3] = True
    with torch.no_grad():
        tokens1, pos1 = backbone.encode(images1, mask)
        tokens2, pos2 = backbone.encode(images2)
        return head(backbone.decode(tokens1, pos1, tokens2, pos2, mask1=mask))


def assert_complete(report: KeyReport) -> None:
    assert not report.missing and not report.unexpected and not report.shape_mismatched, str(report)


def test_build_from_croco_v2_release_round_trip(tmp_path):
    source = make_model()
    path = tmp_path / "CroCo_V2_small.pth"
    torch.save({"model": croco_state(*source), "croco_kwargs": SMALL_CROCO_KWARGS}, path)

    backbone, head, report = build_from_croco(path)

    assert_complete(report)
    assert len(report.matched) == len(croco_state(*source))
    assert backbone.pos_embed == "RoPE100" and len(backbone.dec_blocks) == 2
    torch.testing.assert_close(completion(backbone, head), completion(*source), rtol=0, atol=0)


def test_to_croco_checkpoint_is_the_release_layout_and_inverts_kwargs():
    backbone, head = make_model(pos_embed="cosine")
    checkpoint = to_croco_checkpoint(backbone, head)
    expected = croco_state(backbone, head)
    assert checkpoint["model"].keys() == expected.keys()
    assert checkpoint["model"]["enc_pos_embed"].shape == (16, 64)  # naver/croco registers (N, D)
    assert croco_kwargs_to_ours(checkpoint["croco_kwargs"]) == {**SMALL, "patch_size": 16, "mlp_ratio": 4.0,
                                                                "pos_embed": "cosine"}


def test_croco_kwargs_default_to_v1_and_refuse_unknown_names():
    assert croco_kwargs_to_ours({}) == {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12,
                                        "num_heads": 12, "decoder_embed_dim": 512, "decoder_depth": 8,
                                        "decoder_num_heads": 16, "mlp_ratio": 4, "pos_embed": "cosine"}
    with pytest.raises(ValueError, match="enc_width"):
        croco_kwargs_to_ours({"enc_width": 3})


def test_v1_layout_loads_into_cosine_model_and_rope_model_reports_buffers(tmp_path):
    source = make_model(pos_embed="cosine")
    path = tmp_path / "CroCo.pth"
    torch.save({"model": croco_state(*source)}, path)

    backbone, head = make_model(pos_embed="cosine")
    assert_complete(load_croco(path, backbone, head, strict=True))
    torch.testing.assert_close(completion(backbone, head), completion(*source), rtol=0, atol=0)

    report = load_croco(path, *make_model())
    assert set(report.unexpected) == {"backbone.enc_pos_embed", "backbone.dec_pos_embed"}
    with pytest.raises(RuntimeError, match="enc_pos_embed"):
        load_croco(path, *make_model(), strict=True)


def test_training_script_checkpoint_with_args_namespace_loads(tmp_path):
    source = make_model()
    optimizer = torch.optim.AdamW(source[0].parameters())
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"model": croco_state(*source), "optimizer": optimizer.state_dict(), "scaler": {"scale": 65536.0},
                "args": argparse.Namespace(model="CroCoNet(pos_embed='RoPE100')", lr=1.5e-4), "epoch": 7}, path)

    assert isinstance(read_checkpoint(path)["args"], argparse.Namespace)
    backbone, head = make_model()
    assert_complete(load_croco(path, backbone, head, strict=True))
    torch.testing.assert_close(completion(backbone, head), completion(*source), rtol=0, atol=0)


def test_lightning_checkpoint_and_safetensors_load(tmp_path):
    source = make_model()
    state_dict = {**{f"backbone.{k}": v for k, v in source[0].state_dict().items()},
                  **{f"head.{k}": v for k, v in source[1].state_dict().items()}}
    torch.save({"state_dict": state_dict, "epoch": 1, "global_step": 10}, tmp_path / "last.ckpt")
    save_file({k: v.contiguous() for k, v in croco_state(*source).items()}, tmp_path / "model.safetensors")

    for path in (tmp_path / "last.ckpt", tmp_path / "model.safetensors"):
        backbone, head = make_model()
        assert_complete(load_croco(path, backbone, head, strict=True))
        torch.testing.assert_close(completion(backbone, head), completion(*source), rtol=0, atol=0)


def test_prediction_head_is_unexpected_without_a_head():
    report = load_croco(croco_state(*make_model()), make_model()[0])
    assert report.unexpected == ["head.proj.weight", "head.proj.bias"] and not report.missing


def test_larger_checkpoint_strict_raises_and_non_strict_reports(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save({"model": croco_state(*make_model(embed_dim=96, depth=3))}, path)
    backbone, head = make_model()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}

    with pytest.raises(RuntimeError, match=r"wide\.pth.*backbone\.enc_blocks\.2.*shape mismatched.*patch_embed"):
        load_croco(path, backbone, head, strict=True)
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())  # strict copies nothing

    report = load_croco(path, backbone, head)
    mismatched = {key: (file, model) for key, file, model in report.shape_mismatched}
    assert mismatched["backbone.patch_embed.proj.weight"] == ((96, 3, 16, 16), (64, 3, 16, 16))
    assert "backbone.enc_blocks.2.attn.qkv.weight" in report.unexpected
    assert "backbone.dec_blocks.0.attn.qkv.weight" in report.matched  # the decoder is 64 wide in both


def test_load_encoder_ignores_decoder():
    source, target = make_model(), make_model()
    decoder_before = target[0].dec_blocks.state_dict()

    report = load_encoder({"model": croco_state(*source), "croco_kwargs": SMALL_CROCO_KWARGS}, target[0])

    assert_complete(report)
    assert "backbone.dec_blocks.0.cross_attn.projq.weight" in report.ignored
    assert {"backbone.mask_token", "head.proj.weight"} <= set(report.ignored)
    assert all(k.startswith(("backbone.patch_embed", "backbone.enc_")) for k in report.matched)
    images = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(target[0].encode(images)[0], source[0].encode(images)[0], rtol=0, atol=0)
    assert all(torch.equal(v, decoder_before[k]) for k, v in target[0].dec_blocks.state_dict().items())


def test_refuses_arbitrary_pickle_and_names_missing_files(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "extra": NotAWeight()}, path)
    with pytest.raises(ValueError, match=r"evil\.pth.*NotAWeight.*refuse"):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        read_checkpoint(tmp_path / "nowhere.pth")


def test_raise_if_incomplete_accepts_allowed_missing_prefixes():
    report = KeyReport(matched=["backbone.enc_norm.weight"], missing=["head.proj.weight"])
    report.raise_if_incomplete(allowed_missing=["head."])
    with pytest.raises(RuntimeError, match="head.proj.weight"):
        report.raise_if_incomplete()


def small_timm(**kwargs) -> torch.nn.Module:
    return timm.create_model("vit_base_patch16_rope_224", pretrained=False, img_size=64, embed_dim=64, depth=2,
                             num_heads=2, **kwargs).eval()


def test_timm_export_fills_every_block_and_leaves_timm_only_keys_missing():
    model = small_timm()
    report = load_into_timm(export_timm(make_model()[0]), model)
    assert set(report.missing) == {"cls_token", "head.weight", "head.bias"}
    assert not report.unexpected and not report.shape_mismatched
    assert {k for k in model.state_dict() if k.startswith(("blocks.", "patch_embed.", "norm."))} == set(report.matched)


@pytest.mark.parametrize("grid_indexing,rotate_half", [("xy", False), ("ij", True)])
def test_timm_without_class_token_computes_our_encoder_exactly(grid_indexing, rotate_half):
    backbone = make_model()[0]
    model = small_timm(class_token=False, global_pool="avg", rope_grid_indexing=grid_indexing,
                       rope_rotate_half=rotate_half)
    load_into_timm(export_timm(backbone, grid_indexing, rotate_half), model)
    images = torch.rand(2, 3, 64, 64)
    normalised = (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(normalised), backbone.encode(images)[0], rtol=1e-5, atol=1e-5)
