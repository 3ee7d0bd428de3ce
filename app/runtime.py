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
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.config import AppConfig, StreamConfig
from streaming.generator import ChunkGenerator
from streaming.generator_process import GeneratorSpec

log = logging.getLogger("roam.runtime")

MAX_UPLOADS = 32
# Formats an upload may be in: the usual photo and web formats. Pillow reads many more, and each one
# is a decoder that a stranger's bytes would reach.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
# Pixels an upload may decode to (after a JPEG's reduced-size decode, see `Uploads.add`): 25 MP
# is a 6144 x 4096 photo or a 4K screenshot thrice over.
MAX_UPLOAD_PIXELS = 25_000_000
# Pixels its header may declare: a JPEG this large still decodes at 1/8 of its size or less.
MAX_UPLOAD_HEADER_PIXELS = 100_000_000
# Longest side over shortest side: a start image is cropped to the stream's aspect, and a strip
# thinner than this shows next to nothing of itself.
MAX_UPLOAD_ASPECT = 8.0
# Modes Pillow shrinks by averaging (a palette's indices cannot be averaged).
REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "CMYK", "I", "F")
# Scene ids are "scene:<seed>", the seed in at most this many ASCII digits.
MAX_SEED_DIGITS = 9
# The default prompt of a walk from an uploaded photo (a model with a text encoder; `serve --prompt` replaces it).
UPLOAD_PROMPT = "A first-person walk through the place in this photo, photorealistic, natural light, steady camera."


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
        """The seed of one of `ids()`, or None for any other string. Only a few ASCII digits are read
        as a number: `int` also reads Unicode digits ("²" passes `isdigit` and fails `int`) and
        raises ValueError past 4300 digits."""
        prefix, _, number = scene_id.partition(":")
        if prefix != "scene" or not (number.isascii() and number.isdigit()) or len(number) > MAX_SEED_DIGITS:
            return None
        seed = int(number)
        # One spelling per scene: "scene:01" is not "scene:1".
        return seed if seed in self.seeds and str(seed) == number else None

    def prompt(self, scene_id: str) -> str | None:
        """The scene's default prompt, from its theme (builds the scene when it was not yet: run it off the event loop)."""
        view = self.view(scene_id)
        if view is None:
            return None
        theme = view.name.rsplit(" #", 1)[0].lower()
        return f"A first-person walk through a {theme}, photorealistic, natural light, steady camera."

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


class UploadRefused(ValueError):
    """An upload that is not stored; `status` is the HTTP status that says why (400 not a usable
    image, 413 too many pixels)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Uploads:
    """Uploaded start images (resized and centre-cropped to the stream size), newest MAX_UPLOADS kept.

    Bounded cost: an upload's dimensions are read from its header before anything is decoded, so a
    few bytes that declare a huge or absurdly thin image are refused without decoding them. What is
    decoded is at most MAX_UPLOAD_PIXELS pixels at no more than 4 bytes each; shrinking its crop box
    may copy it once more (Pillow premultiplies RGBA into a full-size copy), so one upload peaks at
    about 8 bytes x 25 MP = 200 MB on top of its bytes, whatever it declares. Uploads decode one at
    a time, so that is also the bound for all of them together. Measured peaks: docs/protocol.md.
    """

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self._items: OrderedDict[str, StartView] = OrderedDict()
        self._lock = threading.Lock()
        self._decode_lock = threading.Lock()

    def add(self, data: bytes) -> str:
        """Decode and store an image (any thread); UploadRefused (a ValueError) says why not."""
        import io

        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as probe:
                probe.verify()
            with self._decode_lock, Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as img:
                rgb = self._start_image(img)
        except UploadRefused:
            raise
        except Image.DecompressionBombError as error:
            raise UploadRefused(413, f"image refused: {error}") from None
        except UnidentifiedImageError:
            raise UploadRefused(400, f"not a {'/'.join(UPLOAD_FORMATS)} image") from None
        # Any decoder error on a stranger's bytes means the same to the page: not a usable image
        # (Pillow raises OSError, SyntaxError, ValueError, struct.error, EOFError, ...).
        except Exception as error:
            raise UploadRefused(400, f"not a decodable {'/'.join(UPLOAD_FORMATS)} image: {error}") from None
        upload_id = "upload:" + hashlib.sha256(data).hexdigest()[:12]
        view = StartView(image=rgb, world_T_cam=np.eye(4), name="Upload")
        with self._lock:
            self._items[upload_id] = view
            self._items.move_to_end(upload_id)
            while len(self._items) > MAX_UPLOADS:
                self._items.popitem(last=False)
        return upload_id

    def _start_image(self, img) -> np.ndarray:
        """The stream-sized RGB start image [H, W, 3] of an opened (not yet decoded) image."""
        from PIL import Image

        # 1. Refuse by the header's size: nothing is decoded yet.
        width, height = img.size
        if width < 1 or height < 1 or width * height > MAX_UPLOAD_HEADER_PIXELS:
            raise UploadRefused(413, f"image of {width}x{height} pixels is too large (at most {MAX_UPLOAD_HEADER_PIXELS // 1_000_000} MP)")
        if max(width, height) > MAX_UPLOAD_ASPECT * min(width, height):
            raise UploadRefused(400, f"image of {width}x{height} pixels is too thin: at most {MAX_UPLOAD_ASPECT:g}:1 between its sides")
        # 2. The centre crop with the stream's aspect; a JPEG decodes at the smallest 1/2, 1/4 or
        # 1/8 scale that still covers the stream size over that crop.
        scale = min(width / self.width, height / self.height)
        crop_w, crop_h = self.width * scale, self.height * scale
        img.draft("RGB", (math.ceil(width * self.width / crop_w), math.ceil(height * self.height / crop_h)))
        if img.width * img.height > MAX_UPLOAD_PIXELS:
            raise UploadRefused(413, f"image of {img.width}x{img.height} pixels is too large (at most {MAX_UPLOAD_PIXELS // 1_000_000} MP)")
        # 3. Decode, shrink the crop box by a whole factor in the decoded mode (rather than first
        # copying all of it to RGB), then to RGB (resizing a palette image would pick nearest
        # pixels) and the final resize.
        fx, fy = img.width / width, img.height / height
        box = ((width - crop_w) / 2 * fx, (height - crop_h) / 2 * fy, (width + crop_w) / 2 * fx, (height + crop_h) / 2 * fy)
        factor = int(min((box[2] - box[0]) / self.width, (box[3] - box[1]) / self.height) / 2)
        if factor > 1 and img.mode in REDUCIBLE_MODES:
            whole = (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))
            img = img.reduce(factor, box=whole)
            box = tuple((b - whole[i % 2]) / factor for i, b in enumerate(box))
        if img.mode != "RGB":
            img = img.convert("RGB")
        out = img.resize((self.width, self.height), Image.Resampling.BICUBIC, box=box)
        return np.asarray(out, dtype=np.uint8).copy()

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
    # How the model is streamed (model.profile.StreamProfile, as run: the stream's window and chunking);
    # None = a bare runtime (tests), which streams as its StreamConfig says.
    profile: Any = None
    # Prompts: the stage-1 text encoder (None = the null caption) and the refiner (None = decode stage 1).
    text_encoder: Any = None
    refiner: Any = None
    uploads: Uploads = field(init=False)
    prompts: Any = field(init=False)

    def __post_init__(self) -> None:
        stride = int(self.vae.spatial_stride)
        if self.stream.width % stride or self.stream.height % stride:
            raise ValueError(f"stream size {self.stream.width}x{self.stream.height} must be a multiple of the VAE's spatial stride {stride}")
        self.uploads = Uploads(self.stream.width, self.stream.height)
        self.prompts = None
        if self.text_encoder is not None:
            from model.prompts import PromptCache

            self.prompts = PromptCache(self.text_encoder, refiner=self.refiner)
        elif self.refiner is not None:
            raise ValueError("a refiner needs the walk's prompt: the runtime has no text encoder")
        if self.refiner is not None and self.refiner.settings.block_latents != self.stream.chunk_latents:
            raise ValueError(f"the refiner refines blocks of {self.refiner.settings.block_latents} latents but chunks have "
                             f"{self.stream.chunk_latents} (--chunk-latents); use {self.refiner.settings.block_latents} or --no-refiner")
        if self.profile is not None and self.profile.prompt_required and self.prompts is None:
            raise ValueError(f"{self.model_name} conditions every chunk on a prompt through its Gemma-2 text encoder, "
                             "which was not found: pass its folder with --text-encoder PATH")
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

    @property
    def takes_prompts(self) -> bool:
        """Whether walks are conditioned on a prompt (the model has a text encoder)."""
        return self.prompts is not None

    def default_prompt(self, start_id: str) -> str | None:
        """The prompt a walk from `start_id` gets when the page sends none: `serve --prompt`, else the scene's own,
        else a generic one for an upload; None without a text encoder. May build a scene: run it off the event loop."""
        if not self.takes_prompts:
            return None
        if self.stream.prompt:
            return self.stream.prompt
        scene_prompt = getattr(self.scenes, "prompt", None)
        if not start_id.startswith("upload:") and scene_prompt is not None:
            prompt = scene_prompt(start_id)
            if prompt:
                return prompt
        return UPLOAD_PROMPT

    def walk_prompt(self, start_id: str, prompt: str | None) -> str | None:
        """The prompt of a walk the page asked for with `prompt` (None or empty: the default); ValueError when a
        prompt is given to a model without a text encoder (it would be silently ignored)."""
        from model.prompts import check_prompt

        text = None if prompt is None else check_prompt(prompt)
        if not self.takes_prompts:
            if text:
                raise ValueError(f"{self.model_name} has no text encoder: walks are not conditioned on a prompt")
            return None
        return text or self.default_prompt(start_id)

    def make_generator(self, prompt: str | None = None) -> ChunkGenerator:
        """A walk's generator; `prompt` (from `walk_prompt`) is encoded once, on the worker thread, when the walk
        starts (the runtime's PromptCache keeps it for the next walk with the same prompt)."""
        if prompt is not None and self.prompts is None:
            raise ValueError(f"{self.model_name} has no text encoder for the prompt {prompt[:40]!r}")
        prompts = self.prompts
        return self.generator_spec().build(prompt=None if prompt is None else (lambda: prompts.encode(prompt)))

    def generator_spec(self) -> GeneratorSpec:
        """What this runtime's walks' generators are built from, here or in a generator process
        (`streaming.generator_process`)."""
        import torch

        K = self.K
        return GeneratorSpec(self.model, self.vae, self.stream.generator_config(), (K[0, 0], K[1, 1], K[0, 2], K[1, 2]),
                             device=self.device, dtype=getattr(self.model, "dtype", torch.float32),
                             conditioner_factory=self.conditioner_factory, refiner=self.refiner)

    def make_integrator(self, world_T_cam0: np.ndarray) -> Any:
        if self.integrator_factory is not None:
            return self.integrator_factory(world_T_cam0, self.stream.fps)
        from controls.integrator import ControlSettings, PoseIntegrator

        return PoseIntegrator(ControlSettings(), world_T_cam0, self.stream.fps)


def build_runtime(config: AppConfig) -> Runtime:
    """Load the model and VAE named by `config` (`model.release`): the embedded tiny ones by default
    (seeded random weights, with a warning, where the trained ones are not installed), or the release
    folder `model_path` (bfloat16 on CUDA) with its text encoder (`text_encoder`, else the release's)
    and refiner (unless `stream.refiner` is off). With `stream_from_model` the stream takes the
    release's size, fps, chunking and field of view. The stream is run as the release's profile says
    (KV window unless the stream names one, fp32 sampling, first frame); the profile as run is logged."""
    import torch

    from model.release import load_embedded, load_release, preflight

    stream = config.stream
    if config.model_path is not None:
        preflight(config.model_path, text_encoder_folder=config.text_encoder)
        dtype = torch.bfloat16 if config.device.startswith("cuda") else None
        release = load_release(config.model_path, device=config.device, dtype=dtype, text_encoder_folder=config.text_encoder,
                               refiner=stream.refiner)
        if config.stream_from_model:
            stream = dataclasses.replace(stream, width=release.width, height=release.height, fps=release.fps, chunk_latents=release.chunk_latents, hfov_deg=release.hfov_deg)
    else:
        release = load_embedded(height=stream.height, width=stream.width, fps=stream.fps, hfov_deg=stream.hfov_deg, device=config.device, seed=stream.seed, chunk_latents=stream.chunk_latents)
    log.info("model: %s", release.describe())
    if stream.sigmas is None:
        stream = dataclasses.replace(stream, sigmas=release.sampler_sigmas)
    stream, profile = stream_for_profile(stream, release.profile)
    for line in profile.describe().splitlines():
        log.info("%s", line)
    return Runtime(model=release.dit, vae=release.vae, model_name=release.name, stream=stream, device=config.device, scenes=config.server.scene_count,
                   profile=profile, text_encoder=release.text_encoder, refiner=release.refiner)


def stream_for_profile(stream: StreamConfig, profile: Any) -> tuple[StreamConfig, Any]:
    """The stream run as `profile` says (its KV window unless the stream names one, fp32 sampling, the first
    frame), and the profile as the stream runs it (window, chunking and σ list the stream's)."""
    if stream.kv_window_chunks is None:
        stream = dataclasses.replace(stream, kv_window_chunks=profile.kv_window_chunks, sink=profile.sink)
    stream = dataclasses.replace(stream, fp32_sampling=profile.fp32_sampling, drop_first_frame=profile.drop_first_frame,
                                 warm_start=profile.warm_start)
    config = stream.generator_config()
    ran = profile.replace(kv_window_chunks=config.kv_window_chunks, sink=config.sink, chunk_latents=config.chunk_latents,
                          sigmas=config.sigmas)
    if ran != profile:
        ran = ran.replace(name=f"{profile.name}, changed on the command line")
    return stream, ran
