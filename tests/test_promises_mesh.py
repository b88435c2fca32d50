"""README promise of ``JointMapHead``'s mesh: inverse kinematics, the global orientation and the camera carry no
gradient; the maps learn from their own two terms."""

import contextlib
import io

import pytest
import torch

from backbone import CroCoNet
from body import BodyModel
from heads import JointMapHead
from lightning_modules import MeshRecoveryModule
from crocoman.synth.bodymodel import write_body_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_mesh_posed_on_joint_maps_has_no_gradient_and_the_maps_learn_from_their_own_terms(tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        write_body_models(tmp_path)
    backbone = CroCoNet(img_size=64, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                        decoder_num_heads=2)
    module = MeshRecoveryModule(backbone, JointMapHead("smpl", features=16, hidden=8),
                                body_model=BodyModel("smpl", str(tmp_path)))
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=generator)
    K = torch.tensor([[100.0, 0.0, 32.0], [0.0, 100.0, 32.0], [0.0, 0.0, 1.0]]).expand(2, 3, 3)
    out = module(images, K)
    # What inverse kinematics, the fitted orientation and the fitted camera make, and what is posed with them:
    for name in ("global_orient", "pose", "betas", "vertices", "joints", "camera", "translation", "keypoints_2d"):
        assert not out[name].requires_grad, name
    for name in ("heatmaps", "locations", "keypoints_px", "joints_body", "joints_camera"):
        assert out[name].requires_grad, name
    joints = module.body_model.num_pose_joints + 1
    batch = {"image": images, "global_orient": 0.3 * torch.randn(2, 3, generator=generator),
             "keypoints_2d": torch.cat((64 * torch.rand(2, joints, 2, generator=generator),
                                        torch.ones(2, joints, 1)), dim=-1),
             "keypoints_3d": torch.cat((torch.randn(2, joints, 3, generator=generator), torch.ones(2, joints, 1)),
                                       dim=-1),
             "has": {name: torch.ones(2, dtype=torch.bool) for name in ("keypoints_2d", "keypoints_3d", "params")}}
    terms = module.losses(out, batch, (None, None))  # target vertices: a joint-map head has no term for them
    assert sorted(terms) == ["keypoints_2d", "keypoints_3d"]
    sum(terms.values()).backward()
    assert module.head.output[-1].weight.grad.abs().sum() > 0
