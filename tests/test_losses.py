import torch

from heads.completion import patchify, unpatchify
from lightning_modules.losses import masked_patch_mse, normalize_patches, sum_by_pair_type


def test_patchify_round_trip_and_layout():
    images = torch.rand(2, 3, 32, 48)
    patches = patchify(images, 16)
    assert patches.shape == (2, 6, 768)
    # patch (row 0, col 1), pixel (0, 0): channels are the fastest axis, as in CroCo's head
    torch.testing.assert_close(patches[0, 1, :3], images[0, :, 0, 16])
    torch.testing.assert_close(unpatchify(patches, 16, (2, 3)), images)


def test_norm_pix_target_uses_unbiased_variance():
    patches = torch.rand(1, 2, 768)
    normalized, mean, std = normalize_patches(patches)
    variance = patches.var(-1, unbiased=True, keepdim=True)
    expected = (patches - patches.mean(-1, keepdim=True)) / torch.sqrt(variance + 1e-6)
    torch.testing.assert_close(normalized, expected)
    torch.testing.assert_close(normalized * std + mean, patches)


def test_loss_only_counts_hidden_patches():
    target = torch.rand(2, 4, 12)
    pred = torch.randn(2, 4, 12, requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    loss = masked_patch_mse(pred, target, mask)
    loss.sum().backward()
    assert (pred.grad[~mask] == 0).all() and (pred.grad[mask] != 0).all()
    changed = pred.detach().clone()
    changed[~mask] += 100.0
    torch.testing.assert_close(masked_patch_mse(changed, target, mask), loss.detach())
    by_hand = ((pred.detach() - normalize_patches(target)[0]) ** 2).mean(-1)
    torch.testing.assert_close(loss[1], by_hand[1, 3])
    torch.testing.assert_close(loss[0], (by_hand[0, 0] + by_hand[0, 2]) / 2)


def test_pair_type_terms_sum_to_batch_mean():
    per_sample = torch.tensor([1.0, 2.0, 3.0, 6.0])
    terms = sum_by_pair_type(per_sample, torch.tensor([0, 1, 1, 0]), ("cross_view", "cross_pose"))
    torch.testing.assert_close(terms["cross_view"], torch.tensor(7.0 / 4))
    torch.testing.assert_close(terms["cross_pose"], torch.tensor(5.0 / 4))
    torch.testing.assert_close(sum(terms.values()), per_sample.mean())
