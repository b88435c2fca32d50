"""Model-free mesh regression: a coarse mesh from vertex queries, upsampled by a fixed linear map.

As FastMETRO / METRO: one query per coarse vertex attends to the patch tokens and regresses that
vertex; a fixed sparse matrix upsamples the coarse mesh to the full topology, and joints are
regressed linearly from the vertices. The body model's file is read once, at construction, for
the topology (template, faces, joint regressor); the derived arrays are persistent buffers, so a
checkpoint predicts meshes with no body-model parameters and no pose/shape space to stay inside.
"""

import torch
from torch import Tensor, nn

from body.camera import MEAN_CAMERA
from body.model import BodyModel, ModelType
from heads.mesh_head import MeshHead
from heads.parametric import UPRIGHT, TokenDecoder, init_linear_layers, init_output_layer

DEFAULT_COARSE = {"smpl": 431, "smplx": 655, "mano": 195}  # METRO's SMPL / MANO sizes; SMPL-X scaled alike


def farthest_point_sampling(points: Tensor, count: int) -> Tensor:
    """Indices of ``count`` points spread evenly over ``points`` (V, 3); deterministic: it starts at
    the point farthest from the centroid, so one model file always gives the same coarse mesh."""
    if not 0 < count <= len(points):
        raise ValueError(f"num_coarse must be in [1, {len(points)}] for this model, got {count}")
    chosen = [int((points - points.mean(0)).norm(dim=1).argmax())]
    distance = (points - points[chosen[0]]).norm(dim=1)
    for _ in range(count - 1):
        chosen.append(int(distance.argmax()))
        distance = torch.minimum(distance, (points - points[chosen[-1]]).norm(dim=1))
    return torch.tensor(chosen)


def upsampling_weights(template: Tensor, coarse: Tensor, allowed: Tensor, neighbours: int) -> tuple[Tensor, Tensor]:
    """Sparse (V, C) upsampling as ``(index, weight)``, each (V, neighbours): inverse-distance weights
    of each vertex's nearest ``allowed`` coarse vertices on the template, rows summing to 1.

    ``allowed`` (V, C) keeps a hand from borrowing a thigh vertex it merely touches at rest, which
    would drag it along when the leg moves. A coarse vertex upsamples to itself (weight ~1).
    """
    distance = torch.cdist(template, template[coarse])
    restricted = distance.masked_fill(~allowed, torch.inf)
    isolated = ~allowed.any(dim=1)
    restricted[isolated] = distance[isolated]  # no allowed coarse vertex at all: take the nearest ones
    nearest, index = restricted.topk(neighbours, dim=1, largest=False)
    weight = 1 / nearest.clamp_min(1e-12)  # beyond the allowed ones (inf) -> 0
    return index, weight / weight.sum(dim=1, keepdim=True)


def kinematic_neighbours(parents: Tensor) -> Tensor:
    """(J, J) bool: a joint, its parent and its children: the parts whose surfaces may blend."""
    adjacent = torch.eye(len(parents), dtype=torch.bool)
    child = torch.arange(1, len(parents))
    adjacent[child, parents[1:]] = adjacent[parents[1:], child] = True
    return adjacent


class VertexHead(MeshHead):
    """Encoder tokens -> full mesh, coarse mesh, joints and a weak-perspective camera.

    Each coarse vertex has a query (its template position, embedded, plus a learned embedding);
    one more query reads the camera. The coarse mesh is regressed as residuals on the template
    stood upright in the camera, with output layers starting near zero, so an untrained head
    outputs the upright template.

    Output (``forward``), metres, camera orientation (OpenCV axes), relative to the root joint
    (pelvis; wrist for MANO): ``vertices`` (B, V, 3), ``coarse_vertices`` (B, num_coarse, 3),
    ``joints`` (B, J, 3), the same joints as ``BodyModel`` (regressed from the vertices), and
    ``camera`` (B, 3), ``(s, tx, ty)`` as in ``body.camera``, acting on these root-relative points:
    already the mesh (``mesh``), with no body-model parameters and no loss terms of its own.

    Buffers (persistent): ``coarse_index`` (num_coarse,) template vertices kept in the coarse mesh,
    ``template_coarse`` (num_coarse, 3), ``upsample_index`` and ``upsample_weight`` (V, neighbours),
    ``joint_regressor`` (J, V), ``faces`` (F, 3); ``joint_names`` as ``BodyModel``'s.

    Args:
        model_type: ``smpl``, ``smplx`` or ``mano``: the topology to predict.
        model_path: the folder holding ``<model_type>/<FILE>`` (as for ``smplx.create``).
        num_coarse: coarse vertices, picked by farthest-point sampling on the template
            (default: 431 SMPL, 655 SMPL-X, 195 MANO).
        neighbours: coarse vertices each vertex is upsampled from.
        dim, depth, num_heads, mlp_ratio: the transformer decoder.
    """

    def __init__(self, model_type: ModelType, model_path: str, num_coarse: int | None = None,
                 dim: int = 512, depth: int = 4, num_heads: int = 8, neighbours: int = 3,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        body = BodyModel(model_type, model_path)
        layer = body.layer
        self.model_type = model_type
        self.num_coarse = num_coarse or DEFAULT_COARSE[model_type]
        self.dim, self.depth, self.num_heads, self.mlp_ratio = dim, depth, num_heads, mlp_ratio
        template = layer.v_template.double()
        coarse = farthest_point_sampling(template, self.num_coarse)
        part = layer.lbs_weights.argmax(dim=1)  # the joint that moves each vertex most
        allowed = kinematic_neighbours(layer.parents)[part][:, part[coarse]]
        index, weight = upsampling_weights(template, coarse, allowed, neighbours)
        joint_regressor = body.joint_regressor().double()
        upright = (template - joint_regressor[0] @ template) @ UPRIGHT.double().T
        self.register_buffer("coarse_index", coarse)
        self.register_buffer("template_coarse", upright[coarse].float())
        self.register_buffer("upsample_index", index)
        self.register_buffer("upsample_weight", weight.float())
        self.register_buffer("joint_regressor", joint_regressor.float())
        self.register_buffer("faces", body.faces.clone())
        self.register_buffer("mean_camera", torch.tensor(MEAN_CAMERA))
        self.joint_names = body.joint_names

    def bind(self, backbone: nn.Module) -> None:
        self.decoder = TokenDecoder(backbone.embed_dim, backbone.patch_grid, self.dim, self.depth, self.num_heads,
                                    self.mlp_ratio)
        self.vertex_embed = nn.Linear(3, self.dim)
        self.vertex_query = nn.Parameter(torch.empty(self.num_coarse, self.dim))
        self.camera_query = nn.Parameter(torch.zeros(self.dim))  # 1-D: kept out of weight decay
        self.vertex_out = nn.Linear(self.dim, 3)
        self.camera_out = nn.Linear(self.dim, 3)
        self.init_weights()

    def init_weights(self) -> None:
        init_linear_layers(self)
        nn.init.normal_(self.vertex_query, std=0.02)
        for layer in (self.vertex_out, self.camera_out):
            init_output_layer(layer)

    def downsample(self, vertices: Tensor) -> Tensor:
        """(B, V, 3) full meshes (e.g. labels) -> (B, num_coarse, 3), to supervise the coarse mesh."""
        return vertices[:, self.coarse_index]

    def upsample(self, coarse: Tensor) -> Tensor:
        """(B, num_coarse, 3) -> (B, V, 3) through the fixed sparse upsampling."""
        return (coarse[:, self.upsample_index] * self.upsample_weight[..., None].to(coarse.dtype)).sum(dim=2)

    def forward(self, tokens: Tensor, positions: Tensor | None = None) -> dict[str, Tensor]:
        """(B, N, embed_dim) encoder tokens (and their positions, see ``TokenDecoder.memory``) -> mesh."""
        memory = self.decoder.memory(tokens, positions)
        batch = len(tokens)
        vertex_queries = self.vertex_embed(self.template_coarse) + self.vertex_query
        queries = torch.cat((self.camera_query[None], vertex_queries))[None].expand(batch, -1, -1)
        out = self.decoder(queries.to(memory.dtype), memory)
        camera = self.mean_camera + self.camera_out(out[:, 0])
        coarse = self.template_coarse + self.vertex_out(out[:, 1:])
        vertices = self.upsample(coarse)
        with torch.autocast(vertices.device.type, enabled=False):  # joints as precise as the vertices
            joints = torch.einsum("jv,bvi->bji", self.joint_regressor.to(vertices.dtype), vertices)
        root = joints[:, :1]
        return {"vertices": vertices - root, "coarse_vertices": coarse - root, "joints": joints - root,
                "camera": camera}

    def mesh(self, out: dict[str, Tensor], body_model: BodyModel | None, K: Tensor,
             image_size: int) -> dict[str, Tensor]:
        return out
