"""Analytic ray casting of capsules and ellipsoids on a textured floor inside a textured backdrop.

Every pixel's ray is intersected with every primitive at once (rays x primitives tensors), so a
128 px frame costs a few tensor ops rather than a Python loop; exact nearest-hit occlusion gives
the person mask and a per-pixel part index for free. World frame: y up, floor at y = 0, the
backdrop a vertical cylinder around the y axis. Cameras are OpenCV: x_cam = R x_world + t.
"""

from dataclasses import dataclass

import torch

_NO_HIT = torch.inf
_SHADOW_OFFSET_M = 1e-3  # shadow rays start this far off the surface so they cannot hit it
_TINY = 1e-20  # floor under square roots: torch's CPU sqrt of exact zeros takes a slow path


@dataclass(frozen=True)
class Capsules:
    """Segments swept by a sphere; `frame` (N, 3, 3) is the bone's local->world rotation, so
    clothing patterns move with the limb."""

    start_m: torch.Tensor  # (N, 3)
    end_m: torch.Tensor  # (N, 3)
    radius_m: torch.Tensor  # (N,)
    frame: torch.Tensor  # (N, 3, 3)
    part: torch.Tensor  # (N,) long, 1..K


@dataclass(frozen=True)
class Ellipsoids:
    center_m: torch.Tensor  # (N, 3)
    rotation: torch.Tensor  # (N, 3, 3) local->world
    radii_m: torch.Tensor  # (N, 3) semi-axes along the local axes
    part: torch.Tensor  # (N,) long, 1..K


@dataclass(frozen=True)
class Checker:
    """Two colours alternating along a subset of three local axes: no axis gives a plain
    colour, one axis stripes, several axes checks. Leading dims index materials (e.g. parts)."""

    color_a: torch.Tensor  # (..., 3) in [0, 1]
    color_b: torch.Tensor  # (..., 3)
    axes: torch.Tensor  # (..., 3) bool
    period_m: torch.Tensor  # (...,)

    def albedo(self, coords_m: torch.Tensor, material: torch.Tensor | None = None) -> torch.Tensor:
        """Colours (N, 3) at local coordinates (N, 3), of material index `material` (N,) if given."""
        color_a, color_b, axes, period_m = self.color_a, self.color_b, self.axes, self.period_m
        if material is not None:
            color_a, color_b, axes, period_m = color_a[material], color_b[material], axes[material], period_m[material]
        cells = torch.floor(coords_m / period_m[..., None]) * axes
        odd = cells.sum(-1).remainder(2)[..., None]
        return color_a * (1 - odd) + color_b * odd


@dataclass(frozen=True)
class Scene:
    capsules: Capsules
    ellipsoids: Ellipsoids
    clothing: Checker  # indexed by part, entry 0 unused (background)
    floor: Checker  # over world (x, -, z)
    backdrop: Checker  # over (arc length, height, -) on the cylinder
    backdrop_radius_m: float
    backdrop_height_m: float
    sky_color: torch.Tensor  # (3,) above the backdrop, unlit
    light_direction: torch.Tensor  # (3,) unit vector towards the light
    ambient: float


@dataclass(frozen=True)
class Rendering:
    rgb: torch.Tensor  # (H, W, 3) uint8
    mask: torch.Tensor  # (H, W) bool, the person
    part: torch.Tensor  # (H, W) uint8, 0 = background, k = primitive part k
    depth_m: torch.Tensor  # (H, W) float32, camera z of the surface each pixel sees (body or not)
    primitive: torch.Tensor  # (H, W) long, the body primitive hit (capsules first), -1 = background


def _capsule_distances(origin: torch.Tensor, direction: torch.Tensor, capsules: Capsules) -> torch.Tensor:
    """Ray parameter (R, N) of the first hit of each ray with each capsule, inf on a miss.

    Infinite-cylinder test, then the sphere cap on the side the cylinder hit fell (Quilez's
    capsule intersection); `direction` must be unit length. Every dot product between a ray
    and a capsule is expanded into (R, 3) x (3, N) matmuls, which keeps all work in (R, N)
    tensors: an order of magnitude faster on CPU than broadcasting to (R, N, 3). Either
    `origin` or `direction` may be a single (1, 3) row shared by all rays (camera rays share
    their origin, shadow rays their direction), and terms that depend on it alone stay (1, N).
    """
    start, axis = capsules.start_m, capsules.end_m - capsules.start_m
    origin_dir = (origin * direction).sum(-1, keepdim=True)
    origin_sq = (origin * origin).sum(-1, keepdim=True)
    dir_start, axis_dir = direction @ start.T, direction @ axis.T
    origin_start, origin_axis = origin @ start.T, origin @ axis.T
    axis_sq = (axis * axis).sum(-1)
    axis_from = origin_axis - (axis * start).sum(-1)  # axis . (origin - start)
    dir_from = origin_dir - dir_start  # direction . (origin - start)
    from_sq = origin_sq - 2 * origin_start + (start * start).sum(-1)  # |origin - start|^2
    radius_sq = capsules.radius_m**2
    a = axis_sq - axis_dir**2
    b = axis_sq * dir_from - axis_from * axis_dir
    c = axis_sq * from_sq - axis_from**2 - radius_sq * axis_sq
    disc = b * b - a * c
    hits_cylinder = disc >= 0
    t_side = (-b - disc.clamp_min(_TINY).sqrt()) / a
    along = axis_from + t_side * axis_dir
    hits_side = hits_cylinder & (along > 0) & (along < axis_sq)
    # The cap sphere on the side of the cylinder hit: at the start, or at end = start + axis.
    near_start = along <= 0
    b_cap = torch.where(near_start, dir_from, dir_from - axis_dir)
    from_cap_sq = torch.where(near_start, from_sq, from_sq - 2 * axis_from + axis_sq)
    disc_cap = b_cap**2 - (from_cap_sq - radius_sq)
    t_cap = -b_cap - disc_cap.clamp_min(_TINY).sqrt()
    hits_cap = hits_cylinder & ~hits_side & (disc_cap > 0)
    t = torch.where(hits_side, t_side, torch.where(hits_cap, t_cap, _NO_HIT))
    return torch.where(t > 0, t, _NO_HIT)


def _ellipsoid_distances(origin: torch.Tensor, direction: torch.Tensor, ellipsoids: Ellipsoids) -> torch.Tensor:
    """Ray parameter (R, N) of the first hit with each ellipsoid, inf on a miss: a unit-sphere
    test in the ellipsoid's scaled local frame."""
    to_local = (ellipsoids.rotation / ellipsoids.radii_m[:, None, :]).permute(1, 0, 2).reshape(3, -1)  # (3, N*3)
    centre_local = torch.einsum("ni,nij->nj", ellipsoids.center_m, ellipsoids.rotation) / ellipsoids.radii_m
    count = len(ellipsoids.part)  # explicit: a batch of zero rays cannot infer it
    local_origin = (origin @ to_local).reshape(len(origin), count, 3) - centre_local  # rows as in `origin`
    local_direction = (direction @ to_local).reshape(len(direction), count, 3)
    a = (local_direction * local_direction).sum(-1)
    b = (local_origin * local_direction).sum(-1)
    c = (local_origin * local_origin).sum(-1) - 1
    disc = b * b - a * c
    t = (-b - disc.clamp_min(_TINY).sqrt()) / a
    return torch.where((disc >= 0) & (t > 0), t, _NO_HIT)


def _bounding_spheres(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (N, 3) and radii (N,) of spheres around every primitive, capsules first."""
    capsules, ellipsoids = scene.capsules, scene.ellipsoids
    half_length_m = (capsules.end_m - capsules.start_m).norm(dim=-1) / 2
    centres = torch.cat([(capsules.start_m + capsules.end_m) / 2, ellipsoids.center_m])
    radii = torch.cat([half_length_m + capsules.radius_m, ellipsoids.radii_m.amax(-1)])
    return centres, radii


def _take(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of per-ray data, leaving a single shared (1, 3) row as it is."""
    return rows if len(rows) == 1 else rows[index]


def _entering_box(origin: torch.Tensor, direction: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Indices of rays that pass through an axis-aligned box (slab test)."""
    to_low, to_high = (low - origin) / direction, (high - origin) / direction
    enter = torch.minimum(to_low, to_high).amax(-1)
    leave = torch.maximum(to_low, to_high).amin(-1)
    return torch.nonzero(leave >= enter.clamp_min(0)).squeeze(1)


def _passing_spheres(
    origin: torch.Tensor, direction: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor
) -> torch.Tensor:
    """Indices of rays whose line passes within some sphere."""
    along = direction @ centres.T - (origin * direction).sum(-1, keepdim=True)  # direction . (centre - origin)
    origin_centre_sq = (origin * origin).sum(-1, keepdim=True) - 2 * origin @ centres.T + (centres * centres).sum(-1)
    clearance = ((origin_centre_sq - radii**2) - along**2).amin(dim=1)
    return torch.nonzero(clearance < 0).squeeze(1)


def _first_body_hit(origin: torch.Tensor, direction: torch.Tensor, scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest body distance (R,) and primitive index (R,), capsules numbered first.

    Most rays of a crop pass nowhere near the body: a box around the body, then a sphere
    around each primitive, cheaply pick the few that do, and only those get exact tests.
    """
    rays = max(len(origin), len(direction))
    centres, radii = _bounding_spheres(scene)
    near = _entering_box(origin, direction, (centres - radii[:, None]).amin(0), (centres + radii[:, None]).amax(0))
    origin, direction = _take(origin, near), _take(direction, near)
    passing = _passing_spheres(origin, direction, centres, radii)
    near, origin, direction = near[passing], _take(origin, passing), _take(direction, passing)
    capsule_t = _capsule_distances(origin, direction, scene.capsules)
    distances = torch.cat([capsule_t, _ellipsoid_distances(origin, direction, scene.ellipsoids)], dim=1)
    near_t, near_primitive = distances.min(dim=1)
    t = torch.full((rays,), _NO_HIT).index_copy_(0, near, near_t)
    primitive = torch.zeros(rays, dtype=torch.long).index_copy_(0, near, near_primitive)
    return t, primitive


def primitive_local_coords(point: torch.Tensor, primitive: torch.Tensor, scene: Scene) -> torch.Tensor:
    """Coordinates (R, 3) of surface points in their primitive's own frame (R,) indices,
    capsules first): from the capsule's start in its bone frame, from the ellipsoid's centre
    along its semi-axes. Clothing patterns and DensePose U, V are both functions of these."""
    capsules, ellipsoids = scene.capsules, scene.ellipsoids
    num_capsules = len(capsules.part)
    coords = torch.empty_like(point)
    on_capsule = torch.nonzero(primitive < num_capsules).squeeze(1)
    cap = primitive[on_capsule]
    coords[on_capsule] = torch.einsum("ri,rij->rj", point[on_capsule] - capsules.start_m[cap], capsules.frame[cap])
    on_ellipsoid = torch.nonzero(primitive >= num_capsules).squeeze(1)
    ell = primitive[on_ellipsoid] - num_capsules
    centred = point[on_ellipsoid] - ellipsoids.center_m[ell]
    coords[on_ellipsoid] = torch.einsum("ri,rij->rj", centred, ellipsoids.rotation[ell])
    return coords


def _body_surface(point: torch.Tensor, primitive: torch.Tensor, scene: Scene) -> tuple[torch.Tensor, ...]:
    """Unit normals (R, 3), clothing colours (R, 3) and part ids (R,) of body hits."""
    capsules, ellipsoids = scene.capsules, scene.ellipsoids
    num_capsules = len(capsules.part)
    normal = torch.empty_like(point)
    coords = primitive_local_coords(point, primitive, scene)

    on_capsule = torch.nonzero(primitive < num_capsules).squeeze(1)
    cap = primitive[on_capsule]
    from_start = point[on_capsule] - capsules.start_m[cap]
    axis = capsules.end_m[cap] - capsules.start_m[cap]
    along = ((from_start * axis).sum(-1) / (axis * axis).sum(-1)).clamp(0, 1)
    normal[on_capsule] = from_start - along[:, None] * axis

    on_ellipsoid = torch.nonzero(primitive >= num_capsules).squeeze(1)
    ell = primitive[on_ellipsoid] - num_capsules
    local = coords[on_ellipsoid]
    normal[on_ellipsoid] = torch.einsum("rij,rj->ri", ellipsoids.rotation[ell], local / ellipsoids.radii_m[ell] ** 2)

    part = torch.cat([capsules.part, ellipsoids.part])[primitive]
    return torch.nn.functional.normalize(normal, dim=-1), scene.clothing.albedo(coords, part), part


def _floor_surface(point: torch.Tensor, scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    normal = torch.tensor([0.0, 1.0, 0.0]).expand_as(point)
    return normal, scene.floor.albedo(point * torch.tensor([1.0, 0.0, 1.0]))


def _backdrop_surface(point: torch.Tensor, scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    normal = point * torch.tensor([-1.0, 0.0, -1.0]) / scene.backdrop_radius_m
    arc_m = torch.atan2(point[:, 2], point[:, 0]) * scene.backdrop_radius_m
    coords = torch.stack([arc_m, point[:, 1], torch.zeros_like(arc_m)], dim=-1)
    return normal, scene.backdrop.albedo(coords)


def _inside(points_m: torch.Tensor, scene: Scene) -> torch.Tensor:
    """Whether each point (N, 3) lies inside each primitive, (N, P) bool, capsules first."""
    capsules, ellipsoids = scene.capsules, scene.ellipsoids
    axis = capsules.end_m - capsules.start_m
    from_start = points_m[:, None] - capsules.start_m
    along = ((from_start * axis).sum(-1) / (axis * axis).sum(-1)).clamp(0, 1)
    in_capsule = (from_start - along[..., None] * axis).norm(dim=-1) < capsules.radius_m
    local = torch.einsum("npi,pij->npj", points_m[:, None] - ellipsoids.center_m, ellipsoids.rotation)
    in_ellipsoid = (local / ellipsoids.radii_m).norm(dim=-1) < 1
    return torch.cat([in_capsule, in_ellipsoid], dim=1)


def hidden_from(points_m: torch.Tensor, viewpoint_m: torch.Tensor, scene: Scene, own: torch.Tensor) -> torch.Tensor:
    """Whether each point (N, 3) is hidden from `viewpoint_m` (3,) by a primitive that is not
    one of its own (`own` (N, P) bool, capsules first), as bool (N,): a primitive crossing the
    segment between them, or one enclosing the point (primitives interpenetrate where limbs
    meet or touch the body, so a joint can be buried in another part)."""
    offset = viewpoint_m - points_m
    length_m = offset.norm(dim=-1, keepdim=True)
    direction = offset / length_m
    capsule_t = _capsule_distances(points_m, direction, scene.capsules)
    distances = torch.cat([capsule_t, _ellipsoid_distances(points_m, direction, scene.ellipsoids)], dim=1)
    return ((distances < length_m) | _inside(points_m, scene)).logical_and(~own).any(dim=1)


def camera_rays(
    K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space camera centre (3,) and unit ray directions (H*W, 3) through pixel centres,
    pixel (u, v) being centred on integer coordinates as in OpenCV."""
    pixels = torch.arange(image_size, dtype=torch.float32)
    v, u = torch.meshgrid(pixels, pixels, indexing="ij")
    homogeneous = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)
    direction_cam = homogeneous @ torch.linalg.inv(K).T
    direction_world = torch.nn.functional.normalize(direction_cam @ R, dim=-1)
    return -R.T @ t, direction_world


def render(scene: Scene, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, image_size: int) -> Rendering:
    """Render a square image of `image_size` px with intrinsics K and world->camera (R, t)."""
    centre, direction = camera_rays(K, R, t, image_size)
    origin = centre[None]

    t_body, primitive = _first_body_hit(origin, direction, scene)
    falling = direction[:, 1] < 0
    t_floor = torch.where(falling, -centre[1] / direction[:, 1].where(falling, -1.0), _NO_HIT)
    # Far root of the backdrop cylinder: the camera stands inside it.
    flat_sq = direction[:, 0] ** 2 + direction[:, 2] ** 2
    flat_dot = centre[0] * direction[:, 0] + centre[2] * direction[:, 2]
    centre_sq = centre[0] ** 2 + centre[2] ** 2 - scene.backdrop_radius_m**2
    t_wall = (-flat_dot + (flat_dot**2 - flat_sq * centre_sq).sqrt()) / flat_sq
    t_hit = torch.minimum(t_body, torch.minimum(t_floor, t_wall))
    point = origin + t_hit[:, None] * direction

    body = torch.nonzero(t_body == t_hit).squeeze(1)
    floor = torch.nonzero((t_floor == t_hit) & (t_body > t_hit)).squeeze(1)
    wall = torch.nonzero((t_wall == t_hit) & (t_body > t_hit) & (t_floor > t_hit)).squeeze(1)
    normal, albedo = torch.empty_like(point), torch.empty_like(point)
    part = torch.zeros(len(point), dtype=torch.long)
    normal[body], albedo[body], part[body] = _body_surface(point[body], primitive[body], scene)
    normal[floor], albedo[floor] = _floor_surface(point[floor], scene)
    normal[wall], albedo[wall] = _backdrop_surface(point[wall], scene)

    # Only surfaces facing the light can be shadowed.
    facing = (normal @ scene.light_direction).clamp_min(0)
    lit = torch.nonzero(facing > 0).squeeze(1)
    t_shadow, _ = _first_body_hit(point[lit] + _SHADOW_OFFSET_M * normal[lit], scene.light_direction[None], scene)
    facing[lit] *= torch.isinf(t_shadow)
    color = albedo * (scene.ambient + (1 - scene.ambient) * facing)[:, None]
    sky = wall[point[wall, 1] > scene.backdrop_height_m]
    color[sky] = scene.sky_color

    shape = (image_size, image_size)
    rgb = (color.clamp(0, 1) * 255).round().to(torch.uint8).reshape(*shape, 3)
    part = part.to(torch.uint8).reshape(shape)
    depth_m = (t_hit * (direction @ R[2])).reshape(shape)
    hit_primitive = torch.full((len(point),), -1, dtype=torch.long).index_copy_(0, body, primitive[body])
    return Rendering(rgb=rgb, mask=part > 0, part=part, depth_m=depth_m, primitive=hit_primitive.reshape(shape))
