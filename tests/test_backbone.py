import pytest
import torch

from backbone import CroCoNet, RandomMasking, croco_base, croco_large, croco_small, croco_tiny
from heads import CompletionHead


def small_net(**kwargs) -> CroCoNet:
    return CroCoNet(**{"img_size": 64, "embed_dim": 64, "depth": 2, "num_heads": 2, "decoder_embed_dim": 32,
                       "decoder_depth": 2, "decoder_num_heads": 2, **kwargs})


@pytest.mark.parametrize(
    ("preset", "embed_dim", "depth"),
    [(croco_tiny, 192, 12), (croco_small, 384, 12), (croco_base, 768, 12), (croco_large, 1024, 24)],
)
@torch.no_grad()
def test_presets_shapes(preset, embed_dim, depth):
    net = preset()
    head = CompletionHead()
    head.bind(net)
    images = torch.rand(1, 3, 224, 224)
    mask = RandomMasking(0.9)(1, net.patch_grid)
    tokens1, pos1 = net.encode(images, mask)
    assert tokens1.shape == (1, 196 - 176, embed_dim) and pos1.shape == (1, 20, 2)
    tokens2, pos2 = net.encode(images)
    assert tokens2.shape == (1, 196, embed_dim) and net.depth == depth
    decoded = net.decode(tokens1, pos1, tokens2, pos2, mask)
    assert decoded.shape == (1, 196, net.decoder_embed_dim)
    assert head(decoded).shape == (1, 196, 16 * 16 * 3)



@torch.no_grad()
def test_masked_encode_keeps_the_visible_tokens_in_grid_order_and_traces_without_a_break():
    net = small_net().eval()
    images = torch.rand(3, 3, 64, 64)
    masking = RandomMasking(0.75)
    mask = masking(3, net.patch_grid)
    num_visible = 16 - masking.num_masked(net.patch_grid)
    # Reference: boolean indexing (row-major visible patches) through the same blocks.
    x, positions = net._embed(images)
    x, positions = x[~mask.flatten(1)].reshape(3, num_visible, -1), positions[~mask.flatten(1)].reshape(3, -1, 2)
    for block in net.enc_blocks:
        x = block(x, net.enc_rope.tables(positions))
    for tokens, pos in (net.encode(images, mask), net.encode(images, mask, num_visible)):
        assert torch.equal(pos, positions)
        torch.testing.assert_close(tokens, net.enc_norm(x))
    # With the count given, the gather needs no data-dependent shape: one graph, no host sync.
    traced = torch.compile(net.encode, backend="eager", fullgraph=True)
    torch.testing.assert_close(traced(images, mask, num_visible)[0], net.enc_norm(x))

def test_visible_positions_are_the_unmasked_patches():
    net = small_net()
    mask = RandomMasking(0.75)(3, (4, 4))
    _, positions = net.encode(torch.rand(3, 3, 64, 64), mask)
    for m, pos in zip(mask, positions):
        assert set(map(tuple, pos.tolist())) == set(map(tuple, (~m).nonzero().tolist()))


def test_decoder_uses_the_second_image():
    net = small_net().eval()
    image1, mask = torch.rand(1, 3, 64, 64), RandomMasking(0.75)(1, (4, 4))
    tokens1, pos1 = net.encode(image1, mask)
    outputs = [net.decode(tokens1, pos1, *net.encode(torch.rand(1, 3, 64, 64)), mask) for _ in range(2)]
    assert not torch.allclose(outputs[0], outputs[1])


def test_masked_patches_of_image1_do_not_leak():
    """Changing hidden pixels of image 1 must not change the decoder output."""
    net = small_net().eval()
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 1:3] = True
    image1, image2 = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    altered = image1.clone()
    altered[..., 16:48, 16:48] = torch.rand(3, 32, 32)
    out = [net.decode(*net.encode(img, mask), *net.encode(image2), mask) for img in (image1, altered)]
    torch.testing.assert_close(out[0], out[1])


def test_non_square_images_and_features():
    net = small_net()
    images = torch.rand(2, 3, 48, 80)
    tokens, positions = net.encode(images)
    assert tokens.shape == (2, 15, 64) and positions[:, -1].tolist() == [[2, 4], [2, 4]]
    features = net.features(images, [0, -1])
    assert [f.shape for f in features] == [(2, 15, 64)] * 2
    torch.testing.assert_close(features[1], tokens)


def test_cosine_position_embedding_variant():
    net = small_net(pos_embed="cosine")
    assert net.enc_pos_embed.shape == (1, 16, 64) and net.dec_pos_embed.shape == (1, 16, 32)
    mask = RandomMasking(0.5)(2, (4, 4))
    images = torch.rand(2, 3, 64, 64)
    assert net.decode(*net.encode(images, mask), *net.encode(images), mask).shape == (2, 16, 32)
    # Embedding only kept patches gives the kept rows of the full embedding, position embedding included.
    keep = torch.tensor([[[5], [0], [15]], [[1], [2], [3]]])
    full, full_positions = net._embed(images)
    kept, kept_positions = net._embed(images, keep)
    torch.testing.assert_close(kept, full.gather(1, keep.expand(-1, -1, 64)))
    assert torch.equal(kept_positions, full_positions.gather(1, keep.expand(-1, -1, 2)))
    with pytest.raises(ValueError, match="fixed to grid"):
        net.encode(torch.rand(1, 3, 32, 32))


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        small_net().encode(torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match="pos_embed"):
        small_net(pos_embed="learned")
    with pytest.raises(ValueError, match="divisible"):
        small_net(embed_dim=63)


def test_training_step_gradients_reach_all_parameters():
    net = small_net()
    head = CompletionHead()
    head.bind(net)
    mask = RandomMasking(0.5)(2, (4, 4))
    images = torch.rand(2, 3, 64, 64)
    head(net.decode(*net.encode(images, mask), *net.encode(images), mask)).pow(2).mean().backward()
    missing = [n for n, p in [*net.named_parameters(), *head.named_parameters()] if p.grad is None]
    assert missing == []


@torch.no_grad()
def test_patch_projection_as_a_matrix_product_is_the_convolution():
    """``_embed`` projects flattened patches with the convolution's weights (CroCo checkpoints keep them
    as ``patch_embed.proj``): the tokens are those of timm's ``PatchEmbed`` on the normalised image."""
    net = small_net().eval()
    images = torch.rand(2, 3, 64, 64)
    tokens, positions = net._embed(images)
    expected = net.patch_embed((images - net.pixel_mean) / net.pixel_std)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
    assert positions[0, 5].tolist() == [1, 1]  # row-major on the 4 x 4 grid


def test_compiled_blocks_trace_whole_and_match_eager():
    """``compile()`` (what ``compile: true`` in a task's YAML runs) compiles each block; every block traces as
    one graph (RoPE tables in, no graph break) for both sequence lengths of pretraining, and gives the eager
    result. The eager backend keeps this to dynamo's tracing, so it runs on any machine."""
    torch.manual_seed(0)
    net = small_net().eval()
    images1, images2 = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    masking = RandomMasking(0.75)
    mask = masking(2, net.patch_grid)

    def complete() -> torch.Tensor:
        tokens1, pos1 = net.encode(images1, mask, 16 - masking.num_masked(net.patch_grid))
        tokens2, pos2 = net.encode(images2)
        return net.decode(tokens1, pos1, tokens2, pos2, mask)

    with torch.no_grad():
        expected = complete()
        torch._dynamo.reset()
        net.compile(backend="eager", fullgraph=True)
        torch.testing.assert_close(complete(), expected)
    torch._dynamo.reset()
