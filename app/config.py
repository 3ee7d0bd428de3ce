"""Configuration of the live app: frozen dataclasses validated on construction.

`AppConfig` = `ServerConfig` (network, limits, auth) + `StreamConfig` (video and generation) +
the model choice. Only `app/serve_cmd.py` builds one from the command line.
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from streaming.generator import DISTILLED_SIGMAS, GeneratorConfig
from streaming.overlap import leaves_a_core_per_thread

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
# The KV window of a StreamConfig that names none and was not filled from a model (the embedded model's).
DEFAULT_KV_WINDOW_CHUNKS = 2
# A DNS name or an IPv4/IPv6 address, as `--allow-host` takes it.
HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*|[0-9a-f:.]+")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """Network side. A non-loopback `host` requires a `token`. Requests are served only for loopback
    Hosts, the bound address and `allowed_hosts` (app/guards.py)."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    # A hard ceiling; below it, admission follows the worker's measured capacity when `admit_by_capacity`.
    max_sessions: int = 8
    # Refuse a session (503 with the reason) once the measured batched chunk times say one more would
    # not keep every walk at its frame rate (streaming.schedule.BatchCost.capacity).
    admit_by_capacity: bool = True
    max_upload_bytes: int = 10 * 1024 * 1024
    max_message_bytes: int = 64 * 1024
    scene_count: int = 6
    web_dir: Path = WEB_DIR
    # Where walks are recorded when their user consents (None: recording is off on this server).
    record_dir: Path | None = None
    # A campaign file (collect.campaign): the page shows its consent and tasks, /api/campaign/* serve
    # them, and record_dir is the campaign's (None: free walks).
    campaign: Path | None = None
    # Chunk-boundary snapshots kept per session for rewind.
    rewind_chunks: int = 16
    # Public host names (lower case, no port) served besides loopback and the bound address.
    allowed_hosts: tuple[str, ...] = ()
    # A WebRTC peer not connected this long after its answer is closed and its slot freed; a page on
    # the same machine connects in well under a second, and gives up itself after 4 s.
    connect_timeout_s: float = 4.0
    # A page that pings (docs/protocol.md, "Liveness") and has been silent this long is gone and its
    # slot freed; it pings every second while shown. A hidden tab's timers may fire once a minute,
    # so it gets longer (ICE consent still frees a vanished one after ~30 s).
    silence_timeout_s: float = 3.0
    hidden_silence_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.token is not None and len(self.token) < 8:
            raise ValueError(f"token must be at least 8 characters, got {len(self.token)}")
        if not is_loopback(self.host) and not self.token:
            raise ValueError(f"binding {self.host!r} (not loopback) requires a token (--token)")
        if self.max_upload_bytes < 1 or self.max_message_bytes < 64:
            raise ValueError(f"bad limits: max_upload_bytes={self.max_upload_bytes} max_message_bytes={self.max_message_bytes}")
        if not 1 <= self.scene_count <= 64:
            raise ValueError(f"scene_count must be in [1, 64], got {self.scene_count}")
        if self.record_dir is not None and Path(self.record_dir).exists() and not Path(self.record_dir).is_dir():
            raise ValueError(f"record_dir {self.record_dir} exists and is not a folder")
        if not 1 <= self.rewind_chunks <= 4096:
            raise ValueError(f"rewind_chunks must be in [1, 4096], got {self.rewind_chunks}")
        for name in self.allowed_hosts:
            if not HOST_NAME.fullmatch(name):
                raise ValueError(f"allowed host {name!r} must be a lower-case host name or address without scheme or port, e.g. roam.example.org")
        if not (math.isfinite(self.connect_timeout_s) and 0.1 <= self.connect_timeout_s <= 120.0):
            raise ValueError(f"connect_timeout_s must be in [0.1, 120], got {self.connect_timeout_s}")
        if not (math.isfinite(self.silence_timeout_s) and math.isfinite(self.hidden_silence_timeout_s)
                and 0.5 <= self.silence_timeout_s <= self.hidden_silence_timeout_s <= 3600.0):
            raise ValueError(f"need 0.5 <= silence_timeout_s <= hidden_silence_timeout_s <= 3600, got {self.silence_timeout_s}, {self.hidden_silence_timeout_s}")


GENERATOR_PROCESS_SETTINGS = ("auto", "on", "off")


@dataclass(frozen=True)
class StreamConfig:
    """Video and generation settings of every session."""

    fps: float = 16.0
    # The embedded model's training size; the tiny model keeps up with it on a 2-core CPU
    # (docs/tiny_sweep.md, python run.py bench stream).
    width: int = 128
    height: int = 128
    hfov_deg: float = 60.0
    chunk_latents: int = 2
    # Recent chunks in the softmax KV window besides the sink; None = the model's profile
    # (Release.profile, filled in by build_runtime); a bare config streams with 2.
    kv_window_chunks: int | None = None
    sink: bool = True
    # The few-step sampler's σ list; None = the one the model was distilled for (Release.sampler_sigmas).
    sigmas: tuple[float, ...] | None = None
    # Sampling in fp32 and the first decoded frame dropped: the model's profile (build_runtime sets them).
    fp32_sampling: bool = False
    drop_first_frame: bool = False
    # Chunks start from the last committed latent (the model's profile: what it was trained for).
    warm_start: bool = False
    # The default prompt of every walk (`serve --prompt`); None = each start scene's own. Only for a
    # model with a text encoder.
    prompt: str | None = None
    # Run the release's refiner when it has one (`serve --no-refiner` turns it off).
    refiner: bool = True
    seed: int = 0
    # Buffer depth in chunks: beyond it the oldest frames are dropped. A walk's next chunk can start only
    # when one more chunk fits, so a batched chunk (which takes longer than one walk's) needs room to
    # start while a chunk's worth of frames is still queued; the worker starts it just in time
    # (streaming.schedule), so a deeper buffer does not mean older frames.
    buffer_chunks: float = 2.0
    # Most walks in one batched chunk (streaming.batched); 1 = each walk's chunk alone.
    batch_sessions: int = 8
    # Standing-camera chunks before a session pauses (0 = never).
    idle_chunks: int = 4
    # torch intra-op threads of the generation worker; None = cores - 1, leaving a core for video
    # encoding and networking (on a busy 2-core box 2 threads ran a chunk many times slower than 1).
    torch_threads: int | None = None
    jpeg_quality: int = 80
    # Bitrates (bit/s) patched into aiortc's encoders: localhost can afford far more than its defaults.
    video_bitrate: int = 3_000_000
    video_bitrate_max: int = 8_000_000
    # Where the walks' chunks are computed: "on", a child process with its own GIL
    # (`streaming.generator_process`); "off", the worker thread of this process; "auto", "on" for the
    # embedded model on a CPU with a core per model thread (what `python run.py` serves). The event
    # loop's Python and the model's torch calls then no longer wait on one GIL (docs/serving.md).
    generator_process: str = "off"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and 1.0 <= self.fps <= 60.0):
            raise ValueError(f"fps must be in [1, 60], got {self.fps}")
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise ValueError(f"width and height must be in [16, 4096], got {self.width}x{self.height}")
        if not 1.0 <= self.hfov_deg <= 170.0:
            raise ValueError(f"hfov_deg must be in [1, 170], got {self.hfov_deg}")
        if self.buffer_chunks < 1.0:
            raise ValueError(f"buffer_chunks must be >= 1, got {self.buffer_chunks}")
        if self.idle_chunks < 0:
            raise ValueError(f"idle_chunks must be >= 0, got {self.idle_chunks}")
        if isinstance(self.batch_sessions, bool) or not isinstance(self.batch_sessions, int) or not 1 <= self.batch_sessions <= 64:
            raise ValueError(f"batch_sessions must be an int in [1, 64], got {self.batch_sessions!r}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.kv_window_chunks is not None and (isinstance(self.kv_window_chunks, bool) or not isinstance(self.kv_window_chunks, int)
                                                  or self.kv_window_chunks < 1):
            raise ValueError(f"kv_window_chunks must be an int >= 1 or None, got {self.kv_window_chunks!r}")
        if self.prompt is not None:
            from model.prompts import check_prompt

            check_prompt(self.prompt)
        if not 100_000 <= self.video_bitrate <= self.video_bitrate_max:
            raise ValueError(f"need 100 kbit/s <= video_bitrate <= video_bitrate_max, got {self.video_bitrate}, {self.video_bitrate_max}")
        if self.generator_process not in GENERATOR_PROCESS_SETTINGS:
            raise ValueError(f"generator_process must be one of {', '.join(GENERATOR_PROCESS_SETTINGS)}, got {self.generator_process!r}")
        self.generator_config()

    def worker_threads(self) -> int:
        return self.torch_threads or max(1, (os.cpu_count() or 2) - 1)

    def generator_config(self) -> GeneratorConfig:
        """The generator's settings. `build_runtime` fills `sigmas` and `kv_window_chunks` with the model's own when
        they are None; a bare config falls back to the official 4-step list and a window of 2 chunks + the sink."""
        sigmas = DISTILLED_SIGMAS if self.sigmas is None else tuple(self.sigmas)
        window = DEFAULT_KV_WINDOW_CHUNKS if self.kv_window_chunks is None else self.kv_window_chunks
        return GeneratorConfig(chunk_latents=self.chunk_latents, sigmas=sigmas, kv_window_chunks=window, sink=self.sink, seed=self.seed,
                               fp32_sampling=self.fp32_sampling, drop_first_frame=self.drop_first_frame,
                               warm_start=self.warm_start)

    def buffer_capacity(self, temporal_stride: int) -> int:
        """Frames a session's buffer keeps: `buffer_chunks` chunks, at least the first chunk."""
        chunk = temporal_stride * self.chunk_latents
        return max(math.ceil(self.buffer_chunks * chunk), chunk + 1)


@dataclass(frozen=True)
class AppConfig:
    """Everything `create_app` needs. `model_path` None = the embedded tiny model."""

    server: ServerConfig = field(default_factory=ServerConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    model_path: Path | None = None
    device: str = "cpu"
    # With a model_path: take the stream's size, fps, chunking and FoV from the release.
    stream_from_model: bool = False
    # The stage-1 Gemma-2 text encoder folder (`--text-encoder`), for a release that does not ship one.
    text_encoder: Path | None = None

    def uses_generator_process(self) -> bool:
        """Whether walks run in a generator process (`StreamConfig.generator_process`, "auto" resolved)."""
        setting = self.stream.generator_process
        if setting != "auto":
            return setting == "on"
        # The rule by which the worker runs its phases side by side (`streaming.overlap`).
        return self.device == "cpu" and self.model_path is None and leaves_a_core_per_thread(self.stream.worker_threads())

    def __post_init__(self) -> None:
        if self.model_path is not None and not Path(self.model_path).exists():
            raise ValueError(f"model path {self.model_path} does not exist")
        if self.text_encoder is not None and not Path(self.text_encoder).is_dir():
            raise ValueError(f"text encoder folder {self.text_encoder} (--text-encoder) does not exist")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
