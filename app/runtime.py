"""What the server runs: the model and VAE, start scenes, and per-session generator/integrator makers.

`Runtime` is built once per server (`build_runtime(config)` loads the embedded tiny model and VAE,
or the model at `--model`) and shared by every session; sessions get their own `ChunkGenerator`
(state, decoder cache, RNG) and `PoseIntegrator`. Tests build a `Runtime` directly to swap parts.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.config import AppConfig, StreamConfig
from streaming.generator import ChunkGenerator

log = logging.getLogger("roam.runtime")

MAX_UPLOADS = 32


@dataclass(frozen=True)
class StartView:
    """A start image at the stream size and the pose it is seen from."""

    image: np.ndarray  # [H, W, 3] uint8
    world_T_cam: np.ndarray  # [4, 4]
    name: str


class SimScenes:
    """Start scenes rendered on the fly by the procedural world (`sim.world.Scene`), cached."""

    def __init__(self, count: int, width: int, height: int, K: np.ndarray, first_seed: int = 1):
        self.seeds = list(range(first_seed, first_seed + count))
        self.width, self.height, self.K = width, height, K
        self._lock = threading.Lock()
        self._built: dict[int, StartView] = {}

    def ids(self) -> list[str]:
        return [f"scene:{seed}" for seed in self.seeds]

    def seed_of(self, scene_id: str) -> int | None:
        prefix, _, number = scene_id.partition(":")
        if prefix != "scene" or not number.isdigit() or int(number) not in self.seeds:
            return None
        return int(number)

    def name(self, scene_id: str) -> str:
        """The theme's name once the scene has been built (see `prewarm`), else a numbered one."""
        seed = self.seed_of(scene_id)
        view = self._built.get(seed)
        return view.name if view is not None else f"Scene #{seed}"

    def prewarm(self, stop: threading.Event | None = None) -> None:
        """Build and render every start scene (blocking; run it in a thread) until `stop` is set."""
        for seed in self.seeds:
            if stop is not None and stop.is_set():
                return
            self._view(seed)

    def view(self, scene_id: str) -> StartView | None:
        seed = self.seed_of(scene_id)
        if seed is None:
            return None
        return self._view(seed)

    @functools.lru_cache(maxsize=64)
    def _view(self, seed: int) -> StartView:
        from sim.world import Scene

        with self._lock:
            scene = Scene.from_seed(seed)
            pose = scene.spawn_world_T_cam()
            rgb = scene.render(pose, self.K, self.width, self.height).rgb[0]
        theme = getattr(scene.theme, "name", None) or "Scene"
        view = StartView(image=np.ascontiguousarray(rgb), world_T_cam=pose, name=f"{str(theme).replace('_', ' ').title()} #{seed}")
        self._built[seed] = view
        return view


class Uploads:
    """Uploaded start images (resized and centre-cropped to the stream size), newest MAX_UPLOADS kept."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self._items: OrderedDict[str, StartView] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, data: bytes) -> str:
        """Decode and store an image (any thread); ValueError if `data` is not a decodable image."""
        import io

        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > 64_000_000:
                    raise ValueError(f"image of {img.width}x{img.height} pixels is too large")
                rgb = img.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ValueError(f"not a decodable image: {error}") from None
        scale = max(self.width / rgb.width, self.height / rgb.height)
        size = (max(self.width, round(rgb.width * scale)), max(self.height, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - self.width) // 2, (size[1] - self.height) // 2
        rgb = rgb.crop((left, top, left + self.width, top + self.height))
        upload_id = "upload:" + hashlib.sha256(data).hexdigest()[:12]
        view = StartView(image=np.asarray(rgb, dtype=np.uint8).copy(), world_T_cam=np.eye(4), name="Upload")
        with self._lock:
            self._items[upload_id] = view
            self._items.move_to_end(upload_id)
            while len(self._items) > MAX_UPLOADS:
                self._items.popitem(last=False)
        return upload_id

    def view(self, upload_id: str) -> StartView | None:
        with self._lock:
            return self._items.get(upload_id)


@dataclass
class Runtime:
    """Shared model pieces and the makers of per-session objects."""

    model: Any
    vae: Any
    model_name: str
    stream: StreamConfig
    device: str = "cpu"
    # A scene source, or the number of sim scenes to offer.
    scenes: Any = 6
    conditioner_factory: Callable[..., Any] | None = None
    integrator_factory: Callable[[np.ndarray, float], Any] | None = None
    uploads: Uploads = field(init=False)

    def __post_init__(self) -> None:
        stride = int(self.vae.spatial_stride)
        if self.stream.width % stride or self.stream.height % stride:
            raise ValueError(f"stream size {self.stream.width}x{self.stream.height} must be a multiple of the VAE's spatial stride {stride}")
        self.uploads = Uploads(self.stream.width, self.stream.height)
        if isinstance(self.scenes, int):
            self.scenes = SimScenes(self.scenes, self.stream.width, self.stream.height, self.K)

    @property
    def K(self) -> np.ndarray:
        """Intrinsics [3, 3] of the stream (horizontal FoV `hfov_deg`)."""
        from controls.camera import intrinsics_from_fov

        return intrinsics_from_fov(self.stream.width, self.stream.height, self.stream.hfov_deg)

    @property
    def temporal_stride(self) -> int:
        return int(self.vae.temporal_stride)

    def start_view(self, start_id: str) -> StartView | None:
        if start_id.startswith("upload:"):
            return self.uploads.view(start_id)
        return self.scenes.view(start_id)

    def make_generator(self) -> ChunkGenerator:
        import torch

        K = self.K
        return ChunkGenerator(
            self.model,
            self.vae,
            self.stream.generator_config(),
            (K[0, 0], K[1, 1], K[0, 2], K[1, 2]),
            device=self.device,
            dtype=getattr(self.model, "dtype", torch.float32),
            conditioner_factory=self.conditioner_factory,
        )

    def make_integrator(self, world_T_cam0: np.ndarray) -> Any:
        if self.integrator_factory is not None:
            return self.integrator_factory(world_T_cam0, self.stream.fps)
        from controls.integrator import ControlSettings, PoseIntegrator

        return PoseIntegrator(ControlSettings(), world_T_cam0, self.stream.fps)


def build_runtime(config: AppConfig) -> Runtime:
    """Load the model and VAE named by `config` (`model.release`): the embedded tiny ones by default
    (seeded random weights, with a warning, where the trained ones are not installed), or the release
    folder `model_path` (bfloat16 on CUDA). With `stream_from_model` the stream takes the release's
    size, fps, chunking and field of view."""
    import torch

    from model.release import load_embedded, load_release

    stream = config.stream
    if config.model_path is not None:
        dtype = torch.bfloat16 if config.device.startswith("cuda") else None
        release = load_release(config.model_path, device=config.device, dtype=dtype)
        if config.stream_from_model:
            stream = dataclasses.replace(stream, width=release.width, height=release.height, fps=release.fps, chunk_latents=release.chunk_latents, hfov_deg=release.hfov_deg)
    else:
        release = load_embedded(height=stream.height, width=stream.width, fps=stream.fps, hfov_deg=stream.hfov_deg, device=config.device, seed=stream.seed, chunk_latents=stream.chunk_latents)
    log.info("model: %s", release.describe())
    if stream.sigmas is None:
        stream = dataclasses.replace(stream, sigmas=release.sampler_sigmas)
    return Runtime(model=release.dit, vae=release.vae, model_name=release.name, stream=stream, device=config.device, scenes=config.server.scene_count)
