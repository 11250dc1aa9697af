"""Pure-PyTorch mesh rasteriser (CPU or CUDA) with nvdiffrast-style analytic antialiasing.

Pass 1, no gradients: every face's pixel-centre bounding box gives (face, pixel) candidates, an
edge-function test keeps those inside, and a z-buffer keeps the nearest face per pixel (one
scatter-amin on an int64 key: float32 bits of z in the high word, face id in the low word).
Pass 2, differentiable, on the winners only: depth = ray/plane intersection, normal = face normal.
Antialiasing (`antialias`) then follows nvdiffrast's `antialias` operation, so both backends
agree: for every pair of neighbouring pixels that see different faces, the front face's silhouette
edge (a mesh boundary, or an edge whose neighbouring face folds behind it on screen) that crosses
the segment between the two centres blends one pixel towards the other by how far the crossing lies
from the midpoint; the blend weight is differentiable in the edge's vertices.
"""
from __future__ import annotations

import torch

from milo_backend.data.camera import Camera
from milo_backend.mesh.view_space import MeshRender, gather_normals, project, world_to_view

# Most (face, pixel) candidates tested at once; bounds pass-1 memory (~100 bytes each).
_CANDIDATES_PER_CHUNK = 1 << 22
_INT64_MAX = torch.iinfo(torch.int64).max
_AA_EPS = 0.0625  # crossing tolerance in pixels, as nvdiffrast


def rasterize_mesh_torch(verts: torch.Tensor, faces: torch.Tensor, camera: Camera,
                         near: float) -> MeshRender:
    height, width = camera.height, camera.width
    faces = faces.to(device=verts.device, dtype=torch.int64)
    v_cam = world_to_view(verts, camera)
    uv = project(v_cam, camera)
    z = v_cam[:, 2]
    drawable = torch.nonzero((z.detach()[faces] > near).all(dim=1)).squeeze(1)
    face_ids = visible_faces(uv.detach(), z.detach(), faces[drawable], height, width)
    if drawable.numel():  # back to rows of the caller's `faces`
        face_ids = torch.where(face_ids >= 0, drawable[face_ids.clamp_min(0)], face_ids)

    depth = _pixel_depth(v_cam, faces, face_ids, camera)
    normals = gather_normals(v_cam, faces, face_ids)
    depth = antialias(depth, face_ids, depth.detach()[..., 0], uv, faces)
    mask = (face_ids >= 0).to(verts.dtype)[..., None]
    return MeshRender(depth, normals, mask, face_ids)


@torch.no_grad()
def visible_faces(uv: torch.Tensor, z: torch.Tensor, faces: torch.Tensor, height: int,
                  width: int) -> torch.Tensor:
    """(H,W) int64 index of the nearest face covering each pixel centre, -1 where none. On the CPU the
    compiled z-buffer (`csrc/zbuffer.cpp`) runs where it is built; this torch pass is its reference."""
    from milo_backend import cpu_kernels
    if uv.device.type == "cpu" and cpu_kernels.available():
        return cpu_kernels.module().zbuffer_faces(uv.contiguous(), z.to(uv.dtype).contiguous(),
                                                  faces.to(torch.int64).contiguous(), height, width)
    dev = uv.device
    fuv = uv[faces]                                                            # (F,3,2)
    last = torch.tensor([width - 1, height - 1], dtype=fuv.dtype, device=dev)
    lo = torch.minimum(torch.ceil(fuv.amin(dim=1) - 0.5).clamp_min(0), last + 1)
    hi = torch.maximum(torch.minimum(torch.floor(fuv.amax(dim=1) - 0.5), last), lo - 1)
    size = (hi - lo + 1).clamp_min(0).long()                                   # (F,2) nx, ny
    count = size[:, 0] * size[:, 1]
    area = _edge(fuv[:, 0], fuv[:, 1], fuv[:, 2])
    todo = torch.nonzero((count > 0) & (area != 0)).squeeze(1)

    keys = torch.full((height * width,), _INT64_MAX, dtype=torch.int64, device=dev)
    csum = torch.cumsum(count[todo], 0)
    start = 0
    while start < todo.numel():
        # Chunk boundaries on the cumulative candidate count; always at least one face.
        done = int(csum[start - 1]) if start > 0 else 0
        stop = int(torch.searchsorted(csum, done + _CANDIDATES_PER_CHUNK, right=True))
        stop = max(stop, start + 1)
        _zbuffer_chunk(todo[start:stop], fuv, z, faces, lo.long(), size, count, area, width, keys)
        start = stop
    ids = keys & 0xFFFFFFFF
    return torch.where(keys == _INT64_MAX, torch.full_like(ids, -1), ids).reshape(height, width)


def _zbuffer_chunk(fids, fuv, z, faces, lo, size, count, area, width, keys) -> None:
    n = count[fids]
    fi = torch.repeat_interleave(fids, n)
    first = torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    local = torch.arange(fi.numel(), device=fi.device) - first
    nx = size[fi, 0]
    px = lo[fi, 0] + local % nx
    py = lo[fi, 1] + local // nx
    p = torch.stack([px, py], dim=1).to(fuv.dtype) + 0.5
    tri = fuv[fi]
    w0 = _edge(tri[:, 1], tri[:, 2], p)
    w1 = _edge(tri[:, 2], tri[:, 0], p)
    w2 = _edge(tri[:, 0], tri[:, 1], p)
    sign = torch.sign(area[fi])
    inside = (w0 * sign >= 0) & (w1 * sign >= 0) & (w2 * sign >= 0)
    fi, px, py = fi[inside], px[inside], py[inside]
    b = torch.stack([w0[inside], w1[inside], w2[inside]], dim=1) / area[fi, None]
    inv_z = (b / z[faces[fi]]).sum(dim=1)                  # 1/z is affine in screen space
    zf = (1.0 / inv_z).float().clamp_min(0.0)
    key = (zf.view(torch.int32).long() << 32) | fi          # positive float bits sort like floats
    keys.scatter_reduce_(0, py * width + px, key, reduce="amin")


def _edge(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Edge function: twice the signed area of (a, b, p)."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def _pixel_depth(v_cam, faces, face_ids, camera: Camera) -> torch.Tensor:
    """(H,W,1) view-space z where the ray through each covered pixel centre meets its face's plane."""
    height, width = face_ids.shape
    flat = face_ids.reshape(-1)
    pix = torch.nonzero(flat >= 0).squeeze(1)
    f = faces[flat[pix]]
    a, b, c = v_cam[f[:, 0]], v_cam[f[:, 1]], v_cam[f[:, 2]]
    n = torch.cross(b - a, c - a, dim=1)
    px = (pix % width).to(v_cam.dtype) + 0.5
    py = torch.div(pix, width, rounding_mode="floor").to(v_cam.dtype) + 0.5
    ray = torch.stack([(px - camera.cx) / camera.fx, (py - camera.cy) / camera.fy,
                       torch.ones_like(px)], dim=1)                 # z = 1, so t is the depth
    depth = (n * a).sum(1) / (n * ray).sum(1)
    out = v_cam.new_zeros(height * width)
    out = out.index_put((pix,), depth)
    return out.reshape(height, width, 1)


# -- antialiasing ----------------------------------------------------------------------------------
def antialias(values: torch.Tensor, face_ids: torch.Tensor, order_depth: torch.Tensor,
              uv: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Silhouette antialiasing of `values` (H,W,C), as nvdiffrast's `antialias`.

    face_ids (H,W) from the rasteriser, order_depth (H,W) decides which of two pixels is in front,
    uv (V,2) projected vertices in pixels (differentiable), faces (F,3).
    """
    height, width = face_ids.shape
    flat_ids = face_ids.reshape(-1)
    flat_depth = order_depth.reshape(-1)
    flat_vals = values.reshape(height * width, -1)
    pairs = []
    for down in (False, True):
        p0, p1 = _neighbour_pairs(height, width, down, face_ids.device)
        differ = flat_ids[p0] != flat_ids[p1]
        p0, p1 = p0[differ], p1[differ]
        t0, t1 = flat_ids[p0], flat_ids[p1]
        front_is_0 = (t0 >= 0) & ((t1 < 0) | (flat_depth[p0] < flat_depth[p1]))
        pairs.append((p0, p1, front_is_0, torch.where(front_is_0, t0, t1), down))
    front_tris = torch.cat([pair[3] for pair in pairs])
    if front_tris.numel() == 0:
        return values
    tris, tri_slot = torch.unique(front_tris, return_inverse=True)
    tri_verts = faces[tris]
    wing_verts = _wing_vertices(faces, tris, uv.shape[0])                        # (U,3)
    silhouette = _silhouette_edges(uv.detach(), tri_verts, wing_verts)           # (U,3)
    out, offset = flat_vals, 0
    for p0, p1, front_is_0, _, down in pairs:
        slot = tri_slot[offset:offset + p0.numel()]
        offset += p0.numel()
        # Only a front triangle with a silhouette edge can blend: skips most pairs of a fine mesh.
        keep = silhouette[slot].any(dim=1)
        p0, p1, front_is_0, slot = p0[keep], p1[keep], front_is_0[keep], slot[keep]
        front_pix = torch.where(front_is_0, p0, p1)
        alpha = _blend_weight(uv, tri_verts[slot], silhouette[slot], front_pix, front_is_0, width, down)
        hit = alpha != 0
        p0, p1, alpha = p0[hit], p1[hit], alpha[hit]
        target = torch.where(alpha > 0, p0, p1)
        out = out.index_add(0, target, alpha[:, None] * (flat_vals[p1] - flat_vals[p0]))
    return out.reshape(values.shape)


def _neighbour_pairs(height: int, width: int, down: bool, device):
    idx = torch.arange(height * width, device=device).reshape(height, width)
    if down:
        return idx[:-1, :].reshape(-1), idx[1:, :].reshape(-1)
    return idx[:, :-1].reshape(-1), idx[:, 1:].reshape(-1)


@torch.no_grad()
def _wing_vertices(faces: torch.Tensor, tris: torch.Tensor, n_verts: int) -> torch.Tensor:
    """(len(tris),3): for edge i of each face in `tris` (the edge opposite its vertex i), the third
    vertex of the other face sharing that edge (the lowest-numbered one where several do), or -1 for a
    boundary edge. On the CPU the compiled twin (`csrc/wing_vertices.cpp`) runs where it is built."""
    from milo_backend import cpu_kernels
    if faces.device.type == "cpu" and cpu_kernels.available():
        return cpu_kernels.module().wing_vertices(faces.to(torch.int64), tris.to(torch.int64), n_verts)
    marked = torch.zeros(n_verts, dtype=torch.bool, device=faces.device)
    marked[faces[tris].reshape(-1)] = True
    # Only faces with two marked vertices can share an edge with a queried face.
    cand = torch.nonzero(marked[faces].sum(dim=1) >= 2).squeeze(1)
    cf = faces[cand]
    ea, eb = cf[:, [1, 2, 0]], cf[:, [2, 0, 1]]                                  # edge i opposite vertex i
    keys = (torch.minimum(ea, eb) * n_verts + torch.maximum(ea, eb)).reshape(-1)
    owner = cand[:, None].expand(-1, 3).reshape(-1)
    third = cf.reshape(-1)
    keys, order = torch.sort(keys, stable=True)  # ties in face order: the lowest-numbered face first
    owner, third = owner[order], third[order]

    qf = faces[tris]
    qa, qb = qf[:, [1, 2, 0]], qf[:, [2, 0, 1]]
    qkeys = torch.minimum(qa, qb) * n_verts + torch.maximum(qa, qb)              # (U,3)
    first = torch.searchsorted(keys, qkeys)
    result = torch.full_like(qkeys, -1)
    for step in (2, 1, 0):  # lowest matching position wins: written last
        j = (first + step).clamp_max(keys.numel() - 1)
        ok = (keys[j] == qkeys) & (owner[j] != tris[:, None]) & (first + step < keys.numel())
        result = torch.where(ok, third[j], result)
    return result


@torch.no_grad()
def _silhouette_edges(uv: torch.Tensor, tri_verts: torch.Tensor, wing_verts: torch.Tensor) -> torch.Tensor:
    """(U,3) bool: edge i (opposite vertex i) is a silhouette edge on screen: no neighbour across
    it, or the neighbour's third vertex lies on the same side as the triangle's own vertex i (the
    neighbour folds behind). Relative to the first vertex: only signs of areas matter."""
    p = uv[tri_verts]
    o = uv[torch.where(wing_verts >= 0, wing_verts, tri_verts)]        # own vertex if no neighbour
    origin = p[:, :1]
    p, o = p - origin, o - origin
    x, y, ox, oy = p[..., 0], p[..., 1], o[..., 0], o[..., 1]
    bb = _tri_area(x[:, 0], y[:, 0], x[:, 1], y[:, 1], x[:, 2], y[:, 2])
    wing = torch.stack([
        _tri_area(ox[:, 0], oy[:, 0], x[:, 1], y[:, 1], x[:, 2], y[:, 2]),
        _tri_area(x[:, 0], y[:, 0], ox[:, 1], oy[:, 1], x[:, 2], y[:, 2]),
        _tri_area(x[:, 0], y[:, 0], x[:, 1], y[:, 1], ox[:, 2], oy[:, 2])], dim=1)
    return _same_sign(wing, bb[:, None])


def _blend_weight(uv, tri_verts, silhouette, front_pix, front_is_0, width: int, down: bool):
    """Signed blend weight per pixel pair (nvdiffrast's AntialiasFwdAnalysisKernel): > 0 blends
    pixel 0 towards pixel 1, < 0 pixel 1 towards pixel 0, 0 = no silhouette edge in between.
    Differentiable in the chosen edge's projected end points."""
    dtype = uv.dtype
    cx = (front_pix % width).to(dtype) + 0.5
    cy = torch.div(front_pix, width, rounding_mode="floor").to(dtype) + 0.5
    p = uv[tri_verts] - torch.stack([cx, cy], dim=1)[:, None, :]              # (Q,3,2) relative
    x, y = p[..., 0], p[..., 1]
    if down:  # along the pair direction is "x"
        x, y = y, x
    x1, x2 = x[:, [1, 2, 0]], x[:, [2, 0, 1]]                                  # edge i: v_{i+1} -> v_{i+2}
    y1, y2 = y[:, [1, 2, 0]], y[:, [2, 0, 1]]
    dx, dy = x2 - x1, y2 - y1
    ds = torch.where(front_is_0, 1.0, -1.0).to(dtype)
    with torch.no_grad():
        straddles = ~_same_sign(y1, y2) & (dy != 0)
        cross_at = torch.where(straddles, ds[:, None] * (x1 - y1 * dx / torch.where(dy != 0, dy, 1.0)),
                               torch.full_like(dx, -float("inf")))
        edge = cross_at.argmax(dim=1, keepdim=True)        # farthest crossing towards the neighbour
        usable = (straddles.gather(1, edge) & silhouette.gather(1, edge)
                  & (dy.abs() >= dx.abs()).gather(1, edge)).squeeze(1)
        at = cross_at.gather(1, edge).squeeze(1)
        usable &= (at > -_AA_EPS) & (at < 1.0 + _AA_EPS)
    ex1, ey1 = x1.gather(1, edge).squeeze(1), y1.gather(1, edge).squeeze(1)
    edx, edy = dx.gather(1, edge).squeeze(1), dy.gather(1, edge).squeeze(1)
    edy = torch.where(usable, edy, torch.ones_like(edy))
    dc = (ds * (ex1 - ey1 * edx / edy)).clamp(0.0, 1.0)
    return torch.where(usable, ds * (0.5 - dc), torch.zeros_like(dc))


def _tri_area(x0, y0, x1, y1, x2, y2):
    return (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)


def _same_sign(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sign-bit comparison (as nvdiffrast: +0 counts as positive, -0 as negative)."""
    return torch.signbit(a) == torch.signbit(b)
