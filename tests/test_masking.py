import pytest
import torch

from backbone.masking import HumanMasking, RandomMasking


@pytest.mark.parametrize("masking", [RandomMasking(0.9), RandomMasking(0.5), HumanMasking(0.75)])
@pytest.mark.parametrize("grid", [(8, 8), (14, 14), (4, 6)])
def test_exact_ratio_in_every_image(masking, grid):
    person = torch.zeros(5, grid[0] * 16, grid[1] * 16)
    person[:, : grid[0] * 8] = 1.0
    mask = masking(5, grid, person)
    assert mask.shape == (5, *grid) and mask.dtype == torch.bool
    assert (mask.flatten(1).sum(1) == int(masking.ratio * grid[0] * grid[1])).all()


def test_random_masks_differ_between_images():
    mask = RandomMasking(0.5)(4, (8, 8))
    assert len({tuple(m.flatten().tolist()) for m in mask}) == 4


def test_human_masking_hides_mostly_the_person():
    torch.manual_seed(0)
    person = torch.zeros(64, 128, 128)
    person[:, :, 32:96] = 1.0  # the person covers the middle half of the columns
    grid = (8, 8)
    on_person = torch.zeros(grid, dtype=torch.bool)
    on_person[:, 2:6] = True
    human = HumanMasking(0.5)(64, grid, person)
    uniform = RandomMasking(0.5)(64, grid)
    human_share = (human & on_person).sum() / human.sum()
    uniform_share = (uniform & on_person).sum() / uniform.sum()
    assert human_share > 0.85
    assert 0.4 < uniform_share < 0.6


def test_human_masking_requires_person_masks():
    with pytest.raises(ValueError, match="person masks"):
        HumanMasking()(2, (4, 4), None)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5])
def test_invalid_ratio_is_refused(ratio):
    with pytest.raises(ValueError, match="mask ratio"):
        RandomMasking(ratio)
