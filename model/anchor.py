"""The clean anchor as a pixel-aligned model input (`ModelConfig.anchor_input`; the embedded model only).

Each chunk's anchor is the newest clean latent frame before it: the stream's last committed latent
(`StreamState.last_latent`), or on a walk's first chunk its frame 0, the start image. Every frame of
the chunk sees the anchor warped into its own view by the rotation between the two cameras, the
homography K·R·K⁻¹ that is exact for distant content (translation and parallax are left to the
model), plus a channel that is 1 where the warped pixel lies inside the anchor's view:

    anchor_features(anchor [B, C, T, h, w], anchor_camera [B, T, 20], camera [B, T, 20]) -> [B, C + 1, T, h, w]

Why: a one-step student sees the anchor only inside its noised input (the warm start, at a
signal-to-noise ratio of 1), and standing still loses 8 dB to the VAE's round trip in the first
second: the copy itself fails. Given the clean anchor where each token's content came from, keeping
what stays in view is a local copy, not a retrieval through attention. The model embeds the features
with a zero-initialised `PatchEmbed` added to the latent tokens, so adding the input to trained
weights changes nothing until training moves it (`train.grow.add_anchor_input`).

The copy gate (`ModelConfig.anchor_copy`). An input embedding still leaves the copy to the network,
through five blocks and the output head's LayerNorm, and it learns it slowly (docs/training.md). The
gate makes the copy one parameter away: a per-token g = Linear(LayerNorm(x_out)), zero-initialised,
blends the velocity towards (x_t − a)/σ, the one whose Euler step to σ = 0 lands exactly on the
warped anchor a; where the anchor is out of view, and on frames at σ ≈ 0, g is 0.

The still term (`ModelConfig.anchor_copy_still`). The gate reads only the network's last hidden state,
and after 780 steps its bias was 0.04: while the camera stands still the warped anchor is the right
answer almost everywhere, but the gate cannot tell standing from walking without learning it through
the whole network. The still term hands it over: with k = c·exp(−p/s), where p = `ray_parallax` is the
camera's move since the anchor across the token's ray, c in [0, 1] starts at 0 and s (metres) is
learned from 0.1, the gate becomes g + k·(1 − g). Standing still, p = 0 on every token and c = 1 copies
outright; walking, the term fades with the parallax. It never lifts the gate past 1: adding c to the
trained gate, where that is already above 0, extrapolated past the anchor on every chunk and sharpened a
standing view into noise within seconds (13.4 dB).

The ground (`ModelConfig.anchor_ground_m`). Walking, the rotation warp is wrong wherever the step moves
what a ray sees, so the still term lets go of nearly the whole view. The procedural world's largest
surface is flat ground at a known depth below the eye, and a plane's warp is exact under translation
too: on the tokens that see the ground (`ground_sample_grid`), after the gate, a second blend with its
own c_ground moves the velocity towards landing on the anchor warped by that plane, where that is in
view. At c_ground = 0 it adds nothing (`train grow --anchor-ground-m`); at 1 the ground is carried
along exactly as the camera walks. What stands on the ground (trees, rocks) is warped as if painted on
it: a decal that shears as the camera passes.

The depth (`ModelConfig.anchor_depth_copy`, model.anchor_depth). With the anchor's own depth, predicted by a
small head, the warp is exact for whatever stays in view (`depth_sample_grid`): a last blend by its own
c_depth moves every token whose point of the anchor is in view towards landing on the depth-warped anchor.

The start (`ModelConfig.anchor_start_fade_m`). Every anchor so far is the newest committed latent, which is
the model's own output: copying it carries the view along, blur and drift included, and nothing ever
brings back the sharp start image once it has been blurred. The start latent (frame 0, the one real
image of a walk; `StreamState.start_latent`) is warped into each view by its own predicted depth, as the
depth copy warps the newest one, with more fixed-point steps (the camera may be tens of metres from the
start) and only where the iteration has settled (`START_CONVERGED_PX`): a last blend by c_start, faded
by exp(−d / fade) with d the camera's distance from the start (the head's depth error moves a warped
point by about d times it, and so does a start that no longer resembles what the camera sees). The sky
and the far hills come back from the start frame as long as they are in its view. The warped positions fall
between latent pixels, where a bilinear sample is a mean of neighbours that the decoder paints as blur
(`ModelConfig.anchor_start_interpolation` "bicubic" keeps more of the start's fine structure).

The background (`ModelConfig.anchor_background_eye_m`). What a turn or a step brings into view is in no latent
the stream holds, and the network regresses it from context. A small one does that badly where it matters
most: after a fast turn away from a near wall or tree, the new view became a wash of the wall's colour that
later chunks kept (a copy of what is in view carries a wash as faithfully as a scene). Yet most of any new view
is predictable without seeing it: every walk starts level, the sky is at infinity and the ground flat, so the
sky and the far ground look, at a given elevation of the ray, much as they did in the start frame at that
elevation, whatever the heading. The background target of a token is the start latent averaged over the
start pixels at its ray's elevation (a Gaussian kernel one latent row wide), over the start's background
pixels only: those the depth head places no nearer than the ground plane `anchor_background_eye_m` below
the first camera would be (1.5 times its inverse depth plus 1/50 m), so a tree or a wall in the start frame
does not colour the sky. The last blend, by c_background, acts only where no copy of a latent reaches:
weighted by (1 − valid_depth)·(1 − valid_start·fade). The background is the right guess where the network knows
nothing and a worse one where it has seen a thing no copy carries (a hut it turned away from and back to), which only
its hidden state knows: `ModelConfig.anchor_background_gate` adds a per-token gate read from it, clamp(1 + g, 0, 1)
with g a zero-initialised linear, for training to close where the network knows better.

Cameras are rows of `camera_conditions`: the row-major camera-to-first-frame pose (16 numbers, OpenCV
axes) and fx, fy, cx, cy on the latent grid, pixel centres on integer coordinates. Without cameras the
anchor is used as it is (identity warp, every pixel valid).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rotation_sample_grid(anchor_camera: torch.Tensor, camera: torch.Tensor, height: int, width: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each pixel of a view falls in the anchor's view, rotating only.

    anchor_camera, camera [..., 20] -> (grid [..., h, w, 2] in grid_sample's align_corners=True units,
    valid [..., h, w] bool: in front of the anchor camera and inside its image). Computed in float32.
    """
    cam_a, cam_t = anchor_camera.float(), camera.float()
    first_R_anchor = cam_a[..., :16].unflatten(-1, (4, 4))[..., :3, :3]  # [..., 3, 3]
    first_R_view = cam_t[..., :16].unflatten(-1, (4, 4))[..., :3, :3]
    anchor_R_view = first_R_anchor.transpose(-1, -2) @ first_R_view  # [..., 3, 3]
    rays_view = _pixel_rays(cam_t, height, width)  # [..., h, w, 3]
    return _project(cam_a, torch.einsum("...ij,...hwj->...hwi", anchor_R_view, rays_view), height, width)


def ground_sample_grid(anchor_camera: torch.Tensor, camera: torch.Tensor, height: int, width: int, ground_m: float
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each pixel of a view falls in the anchor's view if what it sees below the horizon is the ground.

    The ground is the plane `ground_m` below the first camera, which stands level (first-frame y, down in
    OpenCV axes, is the plane's normal). A ray that meets it within GROUND_FAR_M lands on that point; the
    rest, the sky and the far ground, lie at infinity and rotate only, as in `rotation_sample_grid`.
    anchor_camera, camera [..., 20] -> (grid [..., h, w, 2], valid [..., h, w], on_ground [..., h, w] bool).
    """
    cam_a = anchor_camera.float()
    first_T_anchor = cam_a[..., :16].unflatten(-1, (4, 4))
    first_T_view, rays = first_frame_rays(camera, height, width)
    centre = first_T_view[..., None, None, :3, 3]  # [..., 1, 1, 3]
    down = rays[..., 1]
    reach = (ground_m - centre[..., 1]) / down.clamp_min(1e-6)  # multiples of the ray to the plane
    on_ground = (down > 1e-6) & (reach > 0) & (reach * torch.linalg.vector_norm(rays, dim=-1) < GROUND_FAR_M)
    to_ground = centre + reach[..., None] * rays - first_T_anchor[..., None, None, :3, 3]
    direction = torch.where(on_ground[..., None], to_ground, rays)  # first-frame axes
    in_anchor = torch.einsum("...ji,...hwj->...hwi", first_T_anchor[..., :3, :3], direction)
    grid, valid = _project(cam_a, in_anchor, height, width)
    return grid, valid, on_ground


# beyond this the ground moves less than a latent pixel per step at any pace the app walks: treat it as far
GROUND_FAR_M = 50.0
# fixed-point steps of `depth_sample_grid`: at the app's pace (0.7 m per chunk) a third barely moves the grid
DEPTH_WARP_ITERATIONS = 3
# the start copy's: its camera may be tens of metres from the start, so it iterates longer, and keeps only the
# pixels whose landing point one more step moves by less than half a latent pixel
START_WARP_ITERATIONS = 8
START_CONVERGED_PX = 0.5


def depth_sample_grid(anchor_camera: torch.Tensor, camera: torch.Tensor, inverse_depth: torch.Tensor,
                      iterations: int = DEPTH_WARP_ITERATIONS, converged_px: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each pixel of a view falls in the anchor's view, given the anchor's depth.

    anchor_camera, camera [..., 20], inverse_depth [..., h, w] (1/m, z-depth in the anchor camera, 0 =
    infinitely far) -> (grid [..., h, w, 2], valid [..., h, w]). The anchor's depth is known where a point
    lands in the anchor, not along the view's ray, so the landing pixel is found by fixed-point
    iteration: with t the step from the anchor camera to the view's and r the view's ray (both in anchor
    axes), the point t + λ·r has anchor inverse depth ρ when 1/λ = r_z·ρ / (1 − t_z·ρ); start from the
    rotation warp (ρ = 0), sample ρ where the point lands, repeat. Converges where the depth is smooth;
    at an occluding edge it picks one side. Not valid: outside the anchor's image, or a point the step
    has passed (1 − t_z·ρ ≤ 0.05, behind or at the view camera's depth), and with `converged_px` a pixel
    whose landing point the last step moved by that many latent pixels or more (not settled).
    """
    height, width = inverse_depth.shape[-2:]
    cam_a = anchor_camera.float()
    first_T_anchor = cam_a[..., :16].unflatten(-1, (4, 4))
    first_T_view, rays = first_frame_rays(camera, height, width)
    anchor_R_first = first_T_anchor[..., :3, :3].transpose(-1, -2)
    rays_a = torch.einsum("...ij,...hwj->...hwi", anchor_R_first, rays)  # [..., h, w, 3]
    step_a = torch.einsum("...ij,...j->...i", anchor_R_first, first_T_view[..., :3, 3] - first_T_anchor[..., :3, 3])
    step_a = step_a[..., None, None, :]  # [..., 1, 1, 3]
    lead = inverse_depth.shape[:-2]
    flat_rho = inverse_depth.float().reshape(-1, 1, height, width)
    grid, valid = _project(cam_a, rays_a, height, width)
    ahead = torch.ones_like(valid)
    moved = None
    for _ in range(iterations):
        previous = grid
        rho = F.grid_sample(flat_rho, grid.reshape(-1, height, width, 2), mode="bilinear", padding_mode="border",
                            align_corners=True).reshape(*lead, height, width)
        room = 1.0 - step_a[..., 2] * rho
        ahead = room > 0.05
        inv_reach = rays_a[..., 2] * rho / torch.where(ahead, room, torch.ones_like(room))  # 1/λ
        grid, valid = _project(cam_a, rays_a + step_a * inv_reach[..., None], height, width)
        moved = previous - grid
    if converged_px is not None and moved is not None:
        pixels = moved * torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], device=moved.device)
        valid = valid & (torch.linalg.vector_norm(pixels, dim=-1) < converged_px)
    return grid, valid & ahead


def _project(anchor_camera: torch.Tensor, in_anchor: torch.Tensor, height: int, width: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Directions in the anchor camera's axes [..., h, w, 3] -> (grid [..., h, w, 2], valid [..., h, w])."""
    z = in_anchor[..., 2]
    in_front = z > 1e-6
    z = torch.where(in_front, z, torch.ones_like(z))
    afx, afy = anchor_camera[..., 16:17, None], anchor_camera[..., 17:18, None]
    acx, acy = anchor_camera[..., 18:19, None], anchor_camera[..., 19:20, None]
    u_a = afx * in_anchor[..., 0] / z + acx
    v_a = afy * in_anchor[..., 1] / z + acy
    # a thousandth of a pixel of slack, so rounding never drops the border of an unrotated view
    slack = 1e-3
    valid = (in_front & (u_a >= -slack) & (u_a <= width - 1 + slack)
             & (v_a >= -slack) & (v_a <= height - 1 + slack))
    grid = torch.stack((_normalised(u_a, width), _normalised(v_a, height)), dim=-1).clamp(-1.0, 1.0)
    return torch.where(valid[..., None], grid, torch.zeros_like(grid)), valid


def _pixel_rays(camera: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Each pixel's ray in its camera's axes, z = 1: camera [..., 20] (float32) -> [..., h, w, 3]."""
    fx, fy = camera[..., 16:17, None], camera[..., 17:18, None]
    cx, cy = camera[..., 18:19, None], camera[..., 19:20, None]
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=camera.device),
                          torch.arange(width, dtype=torch.float32, device=camera.device), indexing="ij")
    return torch.stack(torch.broadcast_tensors((u - cx) / fx, (v - cy) / fy, torch.ones_like(u)), dim=-1)


def first_frame_rays(camera: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The view's pose and each pixel's ray in first-frame axes: camera [..., 20] -> (first_T_view
    [..., 4, 4], rays [..., h, w, 3], not normalised), float32."""
    cam = camera.float()
    first_T_view = cam[..., :16].unflatten(-1, (4, 4))
    return first_T_view, torch.einsum("...ij,...hwj->...hwi", first_T_view[..., :3, :3], _pixel_rays(cam, height, width))


def ray_parallax(anchor_camera: torch.Tensor, camera: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """How far the camera moved since the anchor, across each pixel's ray: |t × r̂| in metres.

    anchor_camera, camera [..., 20] -> [..., h, w] float32, where t is the view camera's position minus
    the anchor camera's and r̂ the pixel's unit ray, both in first-frame axes. A point at depth d along
    the ray moves about |t × r̂| / d radians between the two views, so 0 means nothing along that ray
    moved whatever its depth: standing still, or looking straight along the step.
    """
    first_T_anchor = anchor_camera.float()[..., :16].unflatten(-1, (4, 4))
    first_T_view, rays = first_frame_rays(camera, height, width)
    step = (first_T_view[..., :3, 3] - first_T_anchor[..., :3, 3])[..., None, None, :]  # [..., 1, 1, 3]
    rays = F.normalize(rays, dim=-1)  # [..., h, w, 3]
    return torch.linalg.vector_norm(torch.linalg.cross(step.expand_as(rays), rays, dim=-1), dim=-1)


def _normalised(coord: torch.Tensor, size: int) -> torch.Tensor:
    return coord * (2.0 / (size - 1)) - 1.0 if size > 1 else torch.zeros_like(coord)


def anchor_features(anchor: torch.Tensor, anchor_camera: torch.Tensor | None, camera: torch.Tensor | None) -> torch.Tensor:
    """The anchor warped into each frame's view and its validity: [B, C, T, h, w] -> [B, C + 1, T, h, w].

    `anchor[:, :, t]` is frame t's anchor (the same frame repeated across a chunk); `anchor_camera` and
    `camera` [B, T, 20] are the anchor's and the frame's camera rows. Both None: no warp.
    Invalid pixels (outside the anchor's view) are 0 in every channel.
    """
    batch, channels, frames, height, width = anchor.shape
    if camera is None or anchor_camera is None:
        if (camera is None) != (anchor_camera is None):
            raise ValueError("anchor_features needs both the anchor's and the frames' cameras, or neither")
        return torch.cat([anchor, torch.ones_like(anchor[:, :1])], dim=1)
    if camera.shape != (batch, frames, 20) or anchor_camera.shape != (batch, frames, 20):
        raise ValueError(f"anchor_features needs cameras [B, T, 20] = {(batch, frames, 20)}, got "
                         f"{tuple(anchor_camera.shape)} (anchor) and {tuple(camera.shape)} (frames)")
    grid, valid = rotation_sample_grid(anchor_camera, camera, height, width)  # [B, T, h, w, 2], [B, T, h, w]
    return _sample(anchor, grid, valid)


def ground_copy_target(anchor: torch.Tensor, anchor_camera: torch.Tensor, camera: torch.Tensor, ground_m: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The anchor warped by `ground_sample_grid` and its validity, as `anchor_features` lays them out, and
    which pixels see the ground: [B, C, T, h, w], cameras [B, T, 20] -> ([B, C + 1, T, h, w], [B, T, h, w])."""
    grid, valid, on_ground = ground_sample_grid(anchor_camera, camera, anchor.shape[-2], anchor.shape[-1], ground_m)
    return _sample(anchor, grid, valid), on_ground


def depth_copy_target(anchor: torch.Tensor, anchor_camera: torch.Tensor, camera: torch.Tensor,
                      inverse_depth: torch.Tensor) -> torch.Tensor:
    """The anchor warped by its depth (`depth_sample_grid`) and its validity, as `anchor_features` lays
    them out: anchor [B, C, T, h, w], cameras [B, T, 20], inverse_depth [B, T, h, w] -> [B, C + 1, T, h, w]."""
    grid, valid = depth_sample_grid(anchor_camera, camera, inverse_depth)
    return _sample(anchor, grid, valid)


def start_copy_target(start: torch.Tensor, start_camera: torch.Tensor, camera: torch.Tensor,
                      inverse_depth: torch.Tensor, fade_m: float, interpolation: str = "bilinear") -> torch.Tensor:
    """The start latent warped into each view by its depth, as `depth_copy_target` lays it out, its last
    channel the validity (settled, `START_CONVERGED_PX`) times exp(−d / fade_m), d the view camera's distance
    from the start camera in metres: start [B, C, 1, h, w], start_camera [B, 1, 20], camera [B, T, 20],
    inverse_depth [B, 1, h, w] -> [B, C + 1, T, h, w]. `interpolation`: grid_sample's mode for the latent
    ("bilinear" or "bicubic", `ModelConfig.anchor_start_interpolation`); the depth is always sampled bilinearly."""
    frames = camera.shape[1]
    start_camera = start_camera.expand(-1, frames, -1)
    grid, valid = depth_sample_grid(start_camera, camera, inverse_depth.expand(-1, frames, -1, -1),
                                    START_WARP_ITERATIONS, START_CONVERGED_PX)
    target = _sample(start.expand(-1, -1, frames, -1, -1), grid, valid, interpolation)  # [B, C + 1, T, h, w]

    def position(cam: torch.Tensor) -> torch.Tensor:
        return cam.float()[..., :16].unflatten(-1, (4, 4))[..., :3, 3]  # [B, T, 3]

    distance = torch.linalg.vector_norm(position(camera) - position(start_camera), dim=-1)  # [B, T]
    fade = torch.exp(-distance / fade_m).to(target.dtype)[:, None, :, None, None]
    return torch.cat([target[:, :-1], target[:, -1:] * fade], dim=1)


BACKGROUND_KERNEL_ROWS = 1.0
BACKGROUND_NEARER_THAN_GROUND = 1.5  # a start pixel this many times nearer than the ground's ray point is not background
BACKGROUND_FAR_INVERSE_M = 0.02  # above the horizon: nearer than 50 m is not background


def ray_elevation(camera: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Each pixel's ray elevation above the first frame's horizon in radians (OpenCV axes, y down): camera
    [..., 20] -> [..., h, w] float32."""
    _, rays = first_frame_rays(camera, height, width)
    return torch.asin((-F.normalize(rays, dim=-1)[..., 1]).clamp(-1.0, 1.0))


def background_copy_target(start: torch.Tensor, start_camera: torch.Tensor, camera: torch.Tensor,
                           inverse_depth: torch.Tensor, eye_m: float) -> torch.Tensor:
    """The start frame's background at each view ray's elevation, and its validity (1 unless the start has no
    background pixel), laid out as `depth_copy_target`'s: start [B, C, 1, h, w], start_camera [B, 1, 20], camera
    [B, T, 20], inverse_depth [B, 1, h, w] (1/m, the depth head's) -> [B, C + 1, T, h, w] float32.

    A start pixel is background when its inverse depth is at most 1.5 times that of the ground plane `eye_m`
    below the first camera along its ray (0 above the horizon), plus 1/50 m: sky, far hills and the ground
    itself, not the things standing on it. Each view token gets the kernel mean of the background pixels over
    elevation (Gaussian, `BACKGROUND_KERNEL_ROWS` latent rows wide); a token above or below every background
    pixel gets the nearest ones'."""
    batch, channels, _, height, width = start.shape
    frames = camera.shape[1]
    start_elevation = ray_elevation(start_camera.float(), height, width).reshape(batch, 1, height * width)
    view_elevation = ray_elevation(camera.float(), height, width).reshape(batch, frames * height * width, 1)
    ground = torch.clamp(-torch.sin(start_elevation), min=0.0) / eye_m  # [B, 1, P] the ground's inverse depth
    background = inverse_depth.float().reshape(batch, 1, height * width) <= (
        BACKGROUND_NEARER_THAN_GROUND * ground + BACKGROUND_FAR_INVERSE_M)
    width_rad = BACKGROUND_KERNEL_ROWS / start_camera.float()[..., 17].abs().clamp_min(1e-6).reshape(batch, 1, 1)
    logits = -(view_elevation - start_elevation) ** 2 / (2.0 * width_rad ** 2)  # [B, Q, P]
    # the max over background pixels only, so a token far from every one still gets the nearest (no underflow)
    logits = logits.masked_fill(~background, float("-inf"))
    peak = logits.amax(dim=-1, keepdim=True)
    weights = torch.exp(logits - torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak)))
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)  # [B, Q, P]; 0 without background
    target = torch.einsum("bqp,bcp->bcq", weights, start.float().reshape(batch, channels, height * width))
    valid = background.any(dim=-1).float().reshape(batch, 1, 1, 1, 1).expand(-1, 1, frames, height, width)
    return torch.cat([target.reshape(batch, channels, frames, height, width), valid], dim=1)


def _sample(anchor: torch.Tensor, grid: torch.Tensor, valid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """anchor [B, C, T, h, w] at grid [B, T, h, w, 2] (grid_sample `mode`), zero where not valid, plus the
    validity channel."""
    batch, channels, frames, height, width = anchor.shape
    flat = anchor.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    warped = F.grid_sample(flat, grid.reshape(batch * frames, height, width, 2).to(anchor.dtype),
                           mode=mode, padding_mode="border", align_corners=True)  # [B·T, C, h, w]
    mask = valid.reshape(batch * frames, 1, height, width).to(anchor.dtype)
    out = torch.cat([warped * mask, mask], dim=1)  # [B·T, C + 1, h, w]
    return out.reshape(batch, frames, channels + 1, height, width).permute(0, 2, 1, 3, 4)
