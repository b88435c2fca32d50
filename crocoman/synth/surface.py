"""Coordinates on the renderer's primitives, shared by body-model meshes and DensePose labels.

Every primitive is a surface of revolution around an axis fixed in its own frame: a capsule
around its bone, an ellipsoid around its local y. A surface point has cylindrical coordinates:
an angle around that axis (0 on the side of the frame's x, i.e. the body's left, increasing
through the front) and a height from 0 (start pole) to 1 (end pole). Mesh vertices are placed in
these coordinates, so they sit on the rendered surface for every shape and pose, and DensePose
U, V are the same coordinates read back from rendered pixels.
"""

from dataclasses import dataclass

import numpy as np
import torch

from crocoman.synth.render import Capsules, Ellipsoids

_X, _Y, _Z = torch.eye(3)


def capsule_axes(capsules: Capsules) -> torch.Tensor:
    """Per capsule, rows (across_1, across_2, axis) (N, 3, 3) of an orthonormal frame in the bone
    frame: `axis` from start to end, `across_1` the bone's x made orthogonal to it (y for bones
    that run along x, like fingers), `across_2` completing the frame and never pointing back."""
    bone = torch.einsum("ni,nij->nj", capsules.end_m - capsules.start_m, capsules.frame)
    axis = torch.nn.functional.normalize(bone, dim=-1)
    reference = torch.where(axis[:, :1].abs() > 0.9, _Y, _X)
    across_1 = torch.nn.functional.normalize(reference - (reference * axis).sum(-1, keepdim=True) * axis, dim=-1)
    across_2 = torch.linalg.cross(axis, across_1)
    across_2 = across_2 * torch.where(across_2[:, 2:] < 0, -1.0, 1.0)
    return torch.stack([across_1, across_2, axis], dim=1)


def _ellipsoid_axes(count: int) -> torch.Tensor:
    return torch.stack([_X, _Z, _Y]).expand(count, 3, 3)


def cylindrical_coords(
    local_m: torch.Tensor, primitive: torch.Tensor, capsules: Capsules, ellipsoids: Ellipsoids
) -> tuple[torch.Tensor, torch.Tensor]:
    """Angle (R,) in (-pi, pi] and height (R,) in [0, 1] of surface points given in their
    primitive's frame (`render.primitive_local_coords`), `primitive` (R,) capsules first."""
    num_capsules = len(capsules.part)
    on_capsule = primitive < num_capsules
    cap = primitive.clamp(max=num_capsules - 1)
    ell = (primitive - num_capsules).clamp(min=0)
    length_m = (capsules.end_m - capsules.start_m).norm(dim=-1)[cap]
    radius_m = capsules.radius_m[cap]
    in_axes = torch.where(
        on_capsule[:, None, None], capsule_axes(capsules)[cap], _ellipsoid_axes(len(ellipsoids.part))[ell]
    )
    scaled = torch.where(on_capsule[:, None], local_m, local_m / ellipsoids.radii_m[ell])
    across_1, across_2, along = torch.einsum("rij,rj->ir", in_axes, scaled)
    capsule_height = (along + radius_m) / (length_m + 2 * radius_m)
    height = torch.where(on_capsule, capsule_height, (along + 1) / 2).clamp(0, 1)
    return torch.atan2(across_2, across_1), height


@dataclass(frozen=True)
class MeshTemplate:
    """Where each vertex sits on its primitive, in terms that hold for every shape and pose.

    Capsule vertices come first: vertex = start + along * (end - start) + radius * frame @
    offset; then ellipsoid vertices: centre + rotation @ (semi-axes * sphere). Vertices are in
    primitive order, so `primitive` is sorted.
    """

    primitive: torch.Tensor  # (V,) long, capsules first
    along: torch.Tensor  # (Vc,) fraction of the bone, capsule vertices
    offset: torch.Tensor  # (Vc, 3) in radii, bone frame
    sphere: torch.Tensor  # (Ve, 3) unit-sphere point, ellipsoid frame
    faces: np.ndarray  # (F, 3) int64, outward (counter-clockwise seen from outside)


def surface_vertices(template: MeshTemplate, capsules: Capsules, ellipsoids: Ellipsoids) -> torch.Tensor:
    """Vertices (V, 3) of the template on these (posed, shaped) primitives."""
    num_capsule_vertices = len(template.along)
    cap = template.primitive[:num_capsule_vertices]
    ell = template.primitive[num_capsule_vertices:] - len(capsules.part)
    start = capsules.start_m[cap]
    on_capsules = (
        start
        + template.along[:, None] * (capsules.end_m[cap] - start)
        + capsules.radius_m[cap, None] * torch.einsum("vij,vj->vi", capsules.frame[cap], template.offset)
    )
    on_ellipsoids = ellipsoids.center_m[ell] + torch.einsum(
        "vij,vj->vi", ellipsoids.rotation[ell], ellipsoids.radii_m[ell] * template.sphere
    )
    return torch.cat([on_capsules, on_ellipsoids])


def _largest_remainder(total: int, shares: np.ndarray, minimum: int = 0) -> np.ndarray:
    """Integers >= `minimum` summing to `total`, proportional to `shares` beyond the minimum."""
    spare = total - minimum * len(shares)
    if spare < 0:
        raise ValueError(f"cannot split {total} into {len(shares)} parts of at least {minimum}")
    exact = spare * shares / shares.sum()
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact, kind="stable")[: spare - counts.sum()]] += 1
    return counts + minimum


def _zipper(ring_a: np.ndarray, ring_b: np.ndarray) -> list[tuple[int, int, int]]:
    """Triangles (len a + len b) of the band between two rings of vertices evenly spaced in
    angle from angle 0, of any sizes: always advance on the ring whose next vertex comes first."""
    triangles = []
    i = j = 0
    n, m = len(ring_a), len(ring_b)
    while i < n or j < m:
        if j == m or (i < n and (i + 1) * m < (j + 1) * n):
            triangles.append((ring_a[i], ring_b[j % m], ring_a[(i + 1) % n]))
            i += 1
        else:
            triangles.append((ring_a[i % n], ring_b[j], ring_b[(j + 1) % m]))
            j += 1
    return triangles


def _surface_area(capsules: Capsules, ellipsoids: Ellipsoids) -> np.ndarray:
    length = (capsules.end_m - capsules.start_m).norm(dim=-1).double().numpy()
    radius = capsules.radius_m.double().numpy()
    a, b, c = ellipsoids.radii_m.double().numpy().T
    p = 1.6075  # Knud Thomsen's approximation, within about 1 %
    ellipsoid = 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    return np.concatenate([2 * np.pi * radius * length + 4 * np.pi * radius**2, ellipsoid])


def _profiles(capsules: Capsules, ellipsoids: Ellipsoids, ring_counts: list[int]) -> list[np.ndarray]:
    """Per primitive, its rings from start pole to end pole as rows (along, axial, radial): the
    point at angle phi is along * bone + axial * axis + radial * (cos phi, sin phi) across it,
    axial and radial in radii (capsules) or semi-axes (ellipsoids). Capsule rings are evenly
    spaced in arc length over cap, side and cap; ellipsoid rings in latitude."""
    length = (capsules.end_m - capsules.start_m).norm(dim=-1).double().numpy()
    radius = capsules.radius_m.double().numpy()
    profiles = []
    for index, rings in enumerate(ring_counts):
        if index < len(length):
            cap_m, side_m = np.pi / 2 * radius[index], length[index]
            arc = np.linspace(0, 2 * cap_m + side_m, rings + 2)[1:-1]
            start_angle = np.clip(arc / radius[index], 0, np.pi / 2)  # from the start pole
            end_angle = np.clip((arc - cap_m - side_m) / radius[index], 0, np.pi / 2)  # past the side
            on_side = (arc > cap_m) & (arc < cap_m + side_m)
            along = np.where(arc <= cap_m, 0.0, np.where(on_side, (arc - cap_m) / side_m, 1.0))
            axial = np.where(arc <= cap_m, -np.cos(start_angle), np.where(on_side, 0.0, np.sin(end_angle)))
            radial = np.where(arc <= cap_m, np.sin(start_angle), np.where(on_side, 1.0, np.cos(end_angle)))
        else:
            latitude = np.linspace(0, np.pi, rings + 2)[1:-1]
            along, axial, radial = np.zeros(rings), -np.cos(latitude), np.sin(latitude)
        profiles.append(np.stack([along, axial, radial], axis=1))
    return profiles


def _primitive_mesh(
    profile: np.ndarray, ring_sizes: np.ndarray, axes: np.ndarray, is_capsule: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One closed primitive: `along` (n,), offsets (n, 3) and outward faces (2n - 4, 3) of its
    start pole, its rings (`ring_sizes` vertices each) and its end pole."""
    across_1, across_2, axis = axes
    rows = [(0.0, -1.0, 0.0, 0.0)]  # along, axial, across_1, across_2 of the start pole
    rings = []
    for (along, axial, radial), size in zip(profile, ring_sizes):
        phi = 2 * np.pi * np.arange(size) / size
        rings.append(len(rows) + np.arange(size))
        rows.extend((along, axial, radial * np.cos(angle), radial * np.sin(angle)) for angle in phi)
    rows.append((1.0 if is_capsule else 0.0, 1.0, 0.0, 0.0))  # end pole
    first, last = rings[0], rings[-1]
    faces = [(0, first[(k + 1) % len(first)], first[k]) for k in range(len(first))]
    for lower, upper in zip(rings, rings[1:]):
        faces.extend(_zipper(lower, upper))
    faces.extend((len(rows) - 1, last[k], last[(k + 1) % len(last)]) for k in range(len(last)))
    table = np.asarray(rows)
    offsets = table[:, 1:2] * axis + table[:, 2:3] * across_1 + table[:, 3:4] * across_2
    faces = np.asarray(faces, dtype=np.int64)
    # The offsets alone form a (flattened) closed surface of the same orientation as the mesh.
    if _signed_volume(offsets, faces) < 0:
        faces = faces[:, ::-1]
    return table[:, 0], offsets, faces


def build_template(capsules: Capsules, ellipsoids: Ellipsoids, num_vertices: int) -> MeshTemplate:
    """A closed mesh of exactly `num_vertices` vertices on these rest-pose primitives: two poles
    and rings per primitive, vertices shared out by surface area and, within a primitive, by ring
    circumference, so the spacing is roughly even everywhere."""
    num_capsules = len(capsules.part)
    num_primitives = num_capsules + len(ellipsoids.part)
    area = _surface_area(capsules, ellipsoids)
    ring_budget = _largest_remainder(num_vertices - 2 * num_primitives, area, minimum=3)
    spacing_m = np.sqrt(area / (ring_budget + 2))
    capsule_meridian_m = np.pi * capsules.radius_m + (capsules.end_m - capsules.start_m).norm(dim=-1)
    radii = ellipsoids.radii_m
    ellipsoid_meridian_m = np.pi / 2 * (radii[:, 1] + radii[:, [0, 2]].mean(1))  # half an ellipse
    meridian_m = torch.cat([capsule_meridian_m, ellipsoid_meridian_m]).double().numpy()
    ring_counts = np.clip(np.round(meridian_m / spacing_m).astype(int) - 1, 1, ring_budget // 3)
    axes = torch.cat([capsule_axes(capsules), _ellipsoid_axes(len(ellipsoids.part))]).double().numpy()
    primitive, along, offset, faces = [], [], [], []
    for index, profile in enumerate(_profiles(capsules, ellipsoids, ring_counts.tolist())):
        ring_sizes = _largest_remainder(int(ring_budget[index]), profile[:, 2], minimum=3)
        mesh_along, mesh_offset, mesh_faces = _primitive_mesh(profile, ring_sizes, axes[index], index < num_capsules)
        faces.append(mesh_faces + len(primitive))
        primitive.extend([index] * len(mesh_along))
        along.append(mesh_along)
        offset.append(mesh_offset)
    primitive = torch.tensor(primitive)
    num_capsule_vertices = int((primitive < num_capsules).sum())
    offset = torch.tensor(np.concatenate(offset), dtype=torch.float32)
    return MeshTemplate(
        primitive=primitive,
        along=torch.tensor(np.concatenate(along)[:num_capsule_vertices], dtype=torch.float32),
        offset=offset[:num_capsule_vertices],
        sphere=offset[num_capsule_vertices:],
        faces=np.concatenate(faces),
    )


def _signed_volume(points: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (points[faces[:, k]] for k in range(3))
    return float(np.einsum("fi,fi->", a, np.cross(b, c))) / 6
