"""README promises of the synthetic hands' angles: pair cameras swung 0.35-1 rad around the side a hand is shown
to; labelled hands tilted by up to 0.8 rad and turned in the image by up to 0.7 rad."""

import numpy as np
import pytest
import torch

from body.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from crocoman.synth.hand import presented_orientation, render_hand_group

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A hand held up to a camera before it is tilted and turned (OpenCV camera axes): fingers (hand x) up (-y), palm
# towards the lens (the back, hand y, along +z); or, as often, the back towards it (half a turn about the fingers).
PALM_FIRST = torch.tensor([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
BACK_FIRST = PALM_FIRST @ torch.diag(torch.tensor([1.0, -1.0, -1.0]))
TOLERANCE_RAD = 0.01


def tilt_left_by_turns(in_camera: torch.Tensor, max_turn_rad: float) -> torch.Tensor:
    """(N,) the least rotation angle left of each (N, 3, 3) camera-frame hand orientation once it is turned back
    in the image (about the camera axis) by at most ``max_turn_rad``, from either way of being held up."""
    turns = torch.linspace(-max_turn_rad, max_turn_rad, 141)
    undo = axis_angle_to_matrix(torch.stack((torch.zeros(141), torch.zeros(141), -turns), dim=1))
    rest = undo[:, None, None] @ in_camera[None, :, None] @ torch.stack((PALM_FIRST, BACK_FIRST)).mT[None, None]
    return matrix_to_axis_angle(rest).norm(dim=-1).amin(dim=(0, 2))


def test_labelled_hands_are_tilted_up_to_0_8_rad_and_turned_up_to_0_7_rad():
    """Each orientation, seen from its camera, is a turn in the image of at most 0.7 rad after a tilt of at most
    0.8 rad; the palm's normal leaves the camera axis by up to 0.8 rad (a turn in the image cannot move it), and
    both limits are reached: some hands need nearly the whole tilt, some more than 0.6 rad of turn."""
    rng = np.random.default_rng(0)
    cameras = axis_angle_to_matrix(torch.tensor(rng.normal(size=(1000, 3)), dtype=torch.float32))
    in_camera = cameras @ torch.stack([axis_angle_to_matrix(presented_orientation(rng, R)) for R in cameras])
    assert tilt_left_by_turns(in_camera, 0.7).max() <= 0.8 + TOLERANCE_RAD
    assert (tilt_left_by_turns(in_camera, 0.6) > 0.8 + TOLERANCE_RAD).any()
    palm_off_axis = torch.arccos(in_camera[:, 2, 1].abs().clamp(max=1.0))
    assert 0.75 < palm_off_axis.max() <= 0.8 + 1e-4


def test_hand_pair_cameras_are_swung_0_35_to_1_rad_around_the_shown_side():
    """Camera 0 of a hand group faces the hand; every other camera looks down on it from the same elevation, swung about
    the vertical by 0.35-1 rad one way or the other (measured from the cameras' optical axes)."""
    swings = []
    for index in range(5):
        frames = render_hand_group(seed=0, index=index, image_size=16, cameras=4, times=1).frames
        towards_camera = [-torch.as_tensor(frame.R, dtype=torch.float64)[2] for frame in frames]  # hand -> camera
        azimuths = [float(torch.atan2(d[0], d[2])) for d in towards_camera]
        for camera in range(1, 4):
            assert float(towards_camera[camera][1]) == pytest.approx(float(towards_camera[0][1]), abs=1e-5)
            swings.append((azimuths[camera] - azimuths[0] + np.pi) % (2 * np.pi) - np.pi)
    sizes = np.abs(swings)
    assert sizes.min() >= 0.35 - 1e-5 and sizes.max() <= 1.0 + 1e-5
    assert sizes.min() < 0.45 and sizes.max() > 0.9 and min(swings) < 0 < max(swings)
