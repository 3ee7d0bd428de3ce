"""Assemble a SANA-WM pipeline (DiT + VAE + optional text encoder) from a local release folder.

    release = load_release("SANA-WM_streaming", device="cuda", dtype=torch.bfloat16)
    release.dit, release.vae, release.text_encoder, release.kind, release.height, release.width

Layouts (sana_wm.md §1) and what `load_release` takes from each:

| kind | DiT | VAE | text encoder |
|---|---|---|---|
| `bidirectional` | `config.json` + `dit/*.safetensors` (or diffusers `transformer/`) | `vae/` | optional |
| `chunk_causal` | the same DiT layout, shipped without a VAE | `vae_folder=`, else a sibling folder's `ltx2_causal_vae/` (then `vae/`) | optional |
| `streaming` | `sana_dit/model.pt` (`generator` / `model.` wrapped) | `ltx2_causal_vae/` (else `vae/`) | optional |

The kind follows from the layout: `sana_dit/model.pt` is the distilled streaming release; a DiT
folder with a `vae/` (or `ltx2_causal_vae/`) is the bidirectional release; a DiT folder without one is
the chunk-causal teacher, whose release ships the DiT alone. `kind=` overrides the guess. The
stage-1 text encoder is Gemma-2 (2304-d): `text_encoder_folder=`, else a Gemma-2 folder in the
release (`text_encoder/`, `gemma-2-2b-it/`, or any sub-folder whose config says `gemma2`). The
refiner's Gemma-3 folders are not it and are skipped. Without one, prompts must be empty and the
DiT's null caption is used.

An optional `roam.json` beside the DiT sets the generation size and chunking when it is not the
official 704×1280 / 16 fps / 3-latent chunks: keys `height`, `width`, `fps`, `chunk_latents`,
`hfov_deg` (the default camera of action strings and presets). Unknown keys are an error.

Every mismatch fails loudly: the DiT loader names file and keys (`model.checkpoint`), the VAE loader
likewise, and `Release` checks that the parts fit (latent channels, Plücker channels = 6 × the VAE's
temporal stride, caption width = the text encoder's hidden size).

How a release is streamed is its `Release.profile` (`model.profile.StreamProfile`): the streaming
release gets `OFFICIAL_STREAMING` (its DiT built with the camera key conv inside each chunk, the
refiner from `refiner_diffusers/` + `gemma3_12b/` unless `refiner=False` or those folders are absent),
the embedded model what its `roam_tiny.json` records, the two teacher releases roam's earlier
defaults (they were not trained to stream). The streaming release conditions every chunk on a prompt
through Gemma-2, which it does not ship: `preflight` says so in one line, before anything loads, when
no text encoder is found (the live app needs one; `generate` warns).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import CheckpointError, find_checkpoint, load_pretrained
from model.profile import OFFICIAL_STREAMING, StreamProfile, embedded_profile
from model.schedulers import check_sampler_sigmas, distilled_sigmas  # noqa: F401 (check_sampler_sigmas: re-exported)

logger = logging.getLogger(__name__)

KINDS = ("bidirectional", "chunk_causal", "streaming", "embedded")
OFFICIAL_HEIGHT, OFFICIAL_WIDTH, OFFICIAL_FPS = 704, 1280, 16.0
OFFICIAL_CHUNK_LATENTS = 3
# 60 s at 16 fps = 961 frames = 121 latents, the longest clip the release was trained on.
MAX_LATENT_FRAMES = 121
DEFAULT_HFOV_DEG = 60.0
_ROAM_KEYS = {"height", "width", "fps", "chunk_latents", "hfov_deg"}
_TEXT_ENCODER_NAMES = ("text_encoder", "gemma-2-2b-it", "gemma_2_2b_it", "gemma2")


@dataclass
class Release:
    """The stage-1 pipeline parts and how to drive them. `__post_init__` checks that they fit."""

    dit: Any  # model.WorldModel
    vae: Any  # TinyVAE | LTX2VideoVAE
    text_encoder: Any | None  # model.text_encoder.TextEncoder
    kind: str
    height: int = OFFICIAL_HEIGHT
    width: int = OFFICIAL_WIDTH
    fps: float = OFFICIAL_FPS
    chunk_latents: int = OFFICIAL_CHUNK_LATENTS
    hfov_deg: float = DEFAULT_HFOV_DEG
    max_latent_frames: int = MAX_LATENT_FRAMES
    name: str = "SANA-WM"
    sources: dict[str, str] = field(default_factory=dict)
    # σ list of the few-step streaming sampler this DiT was distilled for (the app's chunks and the
    # offline `distilled` mode): the official release's 4 steps unless the model ships its own.
    sampler_sigmas: tuple[float, ...] = field(default_factory=lambda: distilled_sigmas())
    # How it is streamed (model.profile); None = the kind's profile (module docstring), made to agree
    # with chunk_latents, sampler_sigmas, the DiT's camera conv and whether a refiner is loaded.
    profile: StreamProfile | None = None
    refiner: Any | None = None  # model.refiner.StreamRefiner

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"release kind must be one of {KINDS}, got {self.kind!r}")
        cfg = self.dit.config
        where = ", ".join(f"{k} from {v}" for k, v in self.sources.items()) or self.name
        if cfg.in_channels != self.vae.latent_channels:
            raise ValueError(f"the DiT takes {cfg.in_channels} latent channels but the VAE has "
                             f"{self.vae.latent_channels} ({where})")
        if cfg.plucker_channels != 6 * self.vae.temporal_stride:
            raise ValueError(f"the DiT's Plücker input has {cfg.plucker_channels} channels, but the VAE's temporal stride "
                             f"{self.vae.temporal_stride} needs 6 × {self.vae.temporal_stride} = "
                             f"{6 * self.vae.temporal_stride} ({where})")
        if self.text_encoder is not None and self.text_encoder.hidden_size != cfg.caption_channels:
            raise ValueError(f"the text encoder's hidden size {self.text_encoder.hidden_size} is not the DiT's caption "
                             f"width {cfg.caption_channels} ({where})")
        stride = self.vae.spatial_stride
        for name in ("height", "width", "chunk_latents", "max_latent_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Release.{name} must be a positive int, got {value!r}")
        if self.height % stride or self.width % stride:
            raise ValueError(f"generation size {self.width}x{self.height} is not a multiple of the VAE stride {stride}")
        self.sampler_sigmas = check_sampler_sigmas(self.sampler_sigmas, where)
        if not (0 < self.fps <= 240) or not (0 < self.hfov_deg < 180):
            raise ValueError(f"fps must be in (0, 240] and hfov_deg in (0, 180), got {self.fps}, {self.hfov_deg}")
        profile = self.profile if self.profile is not None else default_profile(self.kind, self.dit.config)
        if self.refiner is None:
            profile = profile.replace(refiner=None)
        elif profile.refiner is None:
            raise ValueError(f"a refiner was loaded but the profile {profile.name!r} runs none")
        self.profile = profile.replace(chunk_latents=self.chunk_latents, sigmas=self.sampler_sigmas)
        if self.refiner is not None and self.refiner.settings.block_latents != self.chunk_latents:
            raise ValueError(f"the refiner refines blocks of {self.refiner.settings.block_latents} latents, but the "
                             f"release streams chunks of {self.chunk_latents} ({where}); roam.json's chunk_latents "
                             "must be the refiner's block size")
        if self.profile.cam_conv_cross_chunk != cfg.cam_conv_cross_chunk:
            raise ValueError(f"the profile {self.profile.name!r} runs the camera key conv "
                             f"{'across' if self.profile.cam_conv_cross_chunk else 'within'} chunks, the DiT "
                             f"{'across' if cfg.cam_conv_cross_chunk else 'within'} ({where})")

    @property
    def max_frames(self) -> int:
        """Longest clip in raw frames: stride·(max_latent_frames − 1) + 1."""
        return self.vae.temporal_stride * (self.max_latent_frames - 1) + 1

    @property
    def default_mode(self) -> str:
        return {"bidirectional": "bidirectional", "chunk_causal": "chunk_causal"}.get(self.kind, "distilled")

    def describe(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in self.sources.items())
        return f"{self.name} ({self.kind}; {self.width}x{self.height} at {self.fps:g} fps; {parts})"


def default_profile(kind: str, config: Any) -> StreamProfile:
    """The profile a release of `kind` streams with (module docstring); `config`: its DiT's ModelConfig."""
    if kind == "streaming":
        return OFFICIAL_STREAMING
    return embedded_profile(chunk_latents=OFFICIAL_CHUNK_LATENTS, sigmas=distilled_sigmas(),
                            cam_conv_cross_chunk=config.cam_conv_cross_chunk,
                            name=f"{kind} release (roam's defaults; not trained to stream)" if kind != "embedded"
                            else "roam-tiny (as trained)")


def release_kind(root: Path, layout: str) -> str:
    """The kind a release folder's layout says (module docstring)."""
    if layout == "streaming":
        return "streaming"
    if not any(_is_vae_folder(root / n) for n in ("vae", "ltx2_causal_vae")):
        return "chunk_causal"
    return "bidirectional"


TEXT_ENCODER_FLAG = "--text-encoder"


def preflight(folder: str | Path, *, text_encoder_folder: str | Path | None = None, kind: str | None = None) -> str:
    """Check, before any weights load, what a streaming app needs of the release at `folder`; returns its kind.

    The streaming release's profile requires a prompt through the stage-1 Gemma-2 text encoder, which the
    release does not ship: ValueError (one line naming `--text-encoder`) when none is given or found, or when
    the folder given has no config.json. Cheap: reads only the folder's layout.
    """
    root = Path(folder).expanduser()
    files = find_checkpoint(root)
    kind = kind or release_kind(root, files.layout)
    if text_encoder_folder is not None:
        path = Path(text_encoder_folder).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(f"the text encoder folder {str(path)!r} ({TEXT_ENCODER_FLAG}) has no config.json")
        return kind
    profile = OFFICIAL_STREAMING if kind == "streaming" else None
    if profile is not None and profile.prompt_required and _find_text_encoder(root) is None:
        raise ValueError(f"{root.name} conditions every chunk on a prompt through the Gemma-2 text encoder (2304-d), "
                         f"which the release does not ship: pass its folder with {TEXT_ENCODER_FLAG} PATH "
                         "(e.g. a local gemma-2-2b-it)")
    return kind


def _vae_candidates(root: Path, kind: str) -> list[Path]:
    if kind == "streaming":
        return [root / "ltx2_causal_vae", root / "vae"]
    if kind == "bidirectional":
        return [root / "vae", root / "ltx2_causal_vae"]
    siblings = sorted(p for p in root.parent.iterdir() if p.is_dir() and p != root) if root.parent.is_dir() else []
    # The chunk-causal teacher decodes causally like the streaming release: causal VAEs first.
    return [root / "ltx2_causal_vae", root / "vae"] + [s / name for name in ("ltx2_causal_vae", "vae") for s in siblings]


def _is_vae_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _find_text_encoder(root: Path) -> Path | None:
    for name in _TEXT_ENCODER_NAMES:
        if (root / name / "config.json").is_file():
            return root / name
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        config = sub / "config.json"
        if config.is_file():
            try:
                if json.loads(config.read_text()).get("model_type") == "gemma2":
                    return sub
            except (OSError, json.JSONDecodeError, AttributeError):
                continue
    return None


def read_roam_json(root: Path) -> dict[str, Any]:
    """The optional generation settings file (see the module docstring); {} when absent."""
    path = root / "roam.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {str(path)!r}: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _ROAM_KEYS)
    if unknown:
        raise CheckpointError(f"{str(path)!r} has unknown keys {unknown}; known: {sorted(_ROAM_KEYS)}")
    return data


def load_release(
    folder: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    kind: str | None = None,
    vae_folder: str | Path | None = None,
    text_encoder_folder: str | Path | None = None,
    refiner: bool = True,
) -> Release:
    """Load the DiT, VAE and (if present) text encoder of a release folder, and the streaming release's
    refiner unless `refiner` is False; see the module docstring."""
    from model.vae.ltx2 import LTX2VideoVAE

    root = Path(folder).expanduser()
    files = find_checkpoint(root)
    if kind is not None and kind not in KINDS[:3]:
        raise ValueError(f"kind must be one of {KINDS[:3]} or None, got {kind!r}")
    if kind is None:
        kind = release_kind(root, files.layout)
    settings = read_roam_json(root)
    profile = OFFICIAL_STREAMING if kind == "streaming" else None

    if vae_folder is not None:
        vae_path = Path(vae_folder).expanduser()
        if not _is_vae_folder(vae_path):
            raise CheckpointError(f"VAE folder {str(vae_path)!r} does not exist or has no config.json")
    else:
        vae_path = next((p for p in _vae_candidates(root, kind) if _is_vae_folder(p)), None)
        if vae_path is None:
            raise CheckpointError(
                f"no LTX-2 VAE for the {kind} release {str(root)!r}: looked for "
                + ", ".join(repr(str(p)) for p in _vae_candidates(root, kind)[:6])
                + (" ..." if len(_vae_candidates(root, kind)) > 6 else "")
                + "; pass the VAE folder (--vae PATH)"
            )

    if text_encoder_folder is not None:
        text_path: Path | None = Path(text_encoder_folder).expanduser()
    else:
        text_path = _find_text_encoder(root)

    overrides = None if profile is None else {"cam_conv_cross_chunk": profile.cam_conv_cross_chunk}
    dit = load_pretrained(root, device=device, dtype=dtype, config_overrides=overrides)
    vae = LTX2VideoVAE.from_folder(vae_path, device=device, dtype=dtype)
    text_encoder = None
    if text_path is not None:
        from model.text_encoder import TextEncoder

        text_encoder = TextEncoder.from_folder(text_path, device=device, dtype=dtype)
    sources = {"DiT": ", ".join(str(p) for p in files.weights), "VAE": str(vae_path)}
    if text_path is not None:
        sources["text encoder"] = str(text_path)
    fps = float(settings.get("fps", OFFICIAL_FPS))
    stage2 = None
    if profile is not None and profile.refiner is not None and refiner:
        refiner_root, gemma_root = root / "refiner_diffusers", root / "gemma3_12b"
        if refiner_root.is_dir() and gemma_root.is_dir():
            from model.refiner import StreamRefiner

            stage2 = StreamRefiner.from_folders(refiner_root, gemma_root, fps=fps, settings=profile.refiner,
                                                device=device, dtype=dtype)
            sources["refiner"] = f"{refiner_root}, {gemma_root}"
        else:
            logger.warning("%s has no refiner_diffusers/ and gemma3_12b/: its stage-1 latents are decoded directly, "
                           "which the official streaming code never does", root)
    return Release(
        dit=dit, vae=vae, text_encoder=text_encoder, kind=kind,
        height=settings.get("height", OFFICIAL_HEIGHT), width=settings.get("width", OFFICIAL_WIDTH),
        fps=fps, chunk_latents=settings.get("chunk_latents", OFFICIAL_CHUNK_LATENTS),
        hfov_deg=float(settings.get("hfov_deg", DEFAULT_HFOV_DEG)), name=f"SANA-WM ({root.name})", sources=sources,
        profile=profile, refiner=stage2,
    )


def load_embedded(
    *,
    height: int,
    width: int,
    fps: float,
    hfov_deg: float,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    seed: int = 0,
    weights: Path | None = None,
    chunk_latents: int = 2,
    decoder_dtype: torch.dtype | None = None,
) -> Release:
    """The embedded tiny model: trained weights (`model/weights/roam_tiny.safetensors` + `roam_tiny.json`)
    when installed, else `ModelConfig.preset("tiny")` with seeded random weights (a warning says so); the
    committed TinyVAE when its latent channels fit, else a seeded random TinyVAE (warned too). The VAE's
    decoder runs in `decoder_dtype` (None: on a CPU, `cpu_decoder_dtype()`, bf16 where it is native; else
    float32)."""
    from model.checkpoint import load_state_dict_exact, read_weights
    from model.config import ModelConfig
    from model.transformer import WorldModel
    from model.vae import TinyVAE, TinyVAEConfig, cpu_decoder_dtype, load_tiny_vae

    weights = weights or Path(__file__).resolve().parent / "weights" / "roam_tiny.safetensors"
    sources: dict[str, str] = {}
    sampler = distilled_sigmas()
    if weights.is_file():
        config, sampler = _embedded_config_and_sampler(weights.with_suffix(".json"))
        dit = WorldModel(config)
        load_state_dict_exact(dit, read_weights(weights), repr(str(weights)))
        sources["DiT"] = str(weights)
        name = "roam-tiny"
    else:
        logger.warning("the trained tiny model %s is not installed: using ModelConfig.preset('tiny') with seeded random "
                       "weights, so the video will look like noise (train it with `python run.py train`)", weights)
        torch.manual_seed(seed)
        dit = WorldModel(ModelConfig.preset("tiny"))
        sources["DiT"] = "random"
        name = "roam-tiny (random weights)"
    channels = dit.config.in_channels
    vae = None
    vae_path = embedded_vae_path(weights)
    if vae_path.is_file():
        vae = load_tiny_vae(vae_path)
        if vae.latent_channels != channels:
            logger.warning("the tiny VAE %s has %d latent channels, the tiny model %d: using a random TinyVAE",
                           vae_path, vae.latent_channels, channels)
            vae = None
        else:
            sources["VAE"] = str(vae_path)
    else:
        logger.warning("the tiny VAE weights %s are not installed: using a random TinyVAE", vae_path)
    if vae is None:
        torch.manual_seed(seed)
        vae = TinyVAE(TinyVAEConfig(latent_channels=channels))
        sources["VAE"] = "random"
    dit = dit.to(device=device, dtype=dtype).eval()
    vae = vae.to(device=device).eval()
    if decoder_dtype is None:
        decoder_dtype = cpu_decoder_dtype() if torch.device(device).type == "cpu" else torch.float32
    vae.decode_in(decoder_dtype)
    logger.info("the tiny VAE's decoder runs in %s", str(decoder_dtype).removeprefix("torch."))
    window, sink = embedded_window(weights.with_suffix(".json"))
    profile = embedded_profile(chunk_latents=chunk_latents, sigmas=sampler, kv_window_chunks=window, sink=sink,
                               cam_conv_cross_chunk=dit.config.cam_conv_cross_chunk, name=f"{name} (as trained)",
                               warm_start=embedded_warm_start(weights.with_suffix(".json")))
    return Release(dit=dit, vae=vae, text_encoder=None, kind="embedded", height=height, width=width, fps=float(fps),
                   chunk_latents=chunk_latents, hfov_deg=float(hfov_deg), name=name, sources=sources,
                   sampler_sigmas=sampler, profile=profile)


def embedded_window(path: Path) -> tuple[int, bool]:
    """(kv_window_chunks, sink) the tiny model was trained with: `generator.kv_window_chunks` and `generator.sink`
    of `roam_tiny.json`, else (2, True), the window every tiny model so far was trained with."""
    generator = _embedded_generator(path)
    window, sink = generator.get("kv_window_chunks", 2), generator.get("sink", True)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or not isinstance(sink, bool):
        raise CheckpointError(f"{str(path)!r}: generator.kv_window_chunks must be an int >= 1 and generator.sink a bool, "
                              f"got {window!r}, {sink!r}")
    return window, sink


def _embedded_generator(path: Path) -> dict:
    """The `generator` section of `roam_tiny.json` ({} when the file or the section is absent)."""
    data = _read_embedded_json(path)
    generator = data.get("generator") if isinstance(data, dict) else None
    return generator if isinstance(generator, dict) else {}


def embedded_warm_start(path: Path) -> bool:
    """Whether the tiny model was trained for warm-started chunks (`generator.warm_start` of `roam_tiny.json`,
    `model.schedulers.warm_start`); False when the file or the key is absent (every model before it)."""
    warm = _embedded_generator(path).get("warm_start", False)
    if not isinstance(warm, bool):
        raise CheckpointError(f"{str(path)!r}: generator.warm_start must be a bool, got {warm!r}")
    return warm


def vae_tag(path: str | Path) -> str:
    """First 12 hex digits of the sha256 of a VAE weights file: which latent space a model was trained in."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def latent_space_tag(path: str | Path) -> str:
    """The latent space a TinyVAE file decodes: its `latent_space` metadata when it is a decoder refined
    for a space it did not define (train/decoder.py; its encoder is that space's), else its own `vae_tag`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            refined_for = (f.metadata() or {}).get("latent_space")
    except Exception:  # not a safetensors file: load_tiny_vae will say so by name
        refined_for = None
    return refined_for or vae_tag(path)


def embedded_vae_path(weights: str | Path | None = None) -> Path:
    """The TinyVAE weights the embedded model was trained with (or a decoder refined for them).

    A diffusion model only works in the latent space it was trained in, so the embedded model's
    `roam_tiny.json` records the `vae_tag` of its VAE. The candidates, in order: the decoder refined on
    the model's own rollouts (`roam_tiny_decoder.safetensors`, train/decoder.py: the same encoder and
    latent space, a decoder that paints the model's drifted latents without 8×8 blocks), the VAE shipped
    beside the model (`roam_tiny_vae.safetensors`), the same two of the shipped model, the default TinyVAE weights. The first whose latent
    space (`latent_space_tag`) is the recorded one is taken; when none is, the first with a loud warning
    (the picture will be poor), so the app still starts.
    """
    from model.vae import DEFAULT_WEIGHTS

    shipped = Path(__file__).resolve().parent / "weights" / "roam_tiny.safetensors"
    weights = Path(weights) if weights is not None else shipped
    # Then the shipped model's decoder and VAE: weights trained elsewhere in the same latent space (a
    # candidate from docs/training.md, an exported run) find them by their tag.
    ordered = [weights.with_name(weights.stem + "_decoder.safetensors"), weights.with_name(weights.stem + "_vae.safetensors"),
               shipped.with_name(shipped.stem + "_decoder.safetensors"), shipped.with_name(shipped.stem + "_vae.safetensors"),
               Path(DEFAULT_WEIGHTS)]
    candidates = [p for i, p in enumerate(ordered) if p.is_file() and p.resolve() not in {q.resolve() for q in ordered[:i]}]
    if not candidates:
        return DEFAULT_WEIGHTS
    info_path = weights.with_suffix(".json")
    try:
        wanted = json.loads(info_path.read_text()).get("vae_tag") if info_path.is_file() else None
    except (OSError, json.JSONDecodeError):
        wanted = None
    if wanted is None:
        return candidates[0]
    for path in candidates:
        if latent_space_tag(path) == wanted:
            return path
    logger.warning("no installed TinyVAE matches the tiny model's vae_tag %s (looked at %s): using %s, whose latent "
                   "space differs, so the video will be poor", wanted, [str(p) for p in candidates], candidates[0])
    return candidates[0]


def _read_embedded_json(path: Path) -> Any:
    """The parsed `roam_tiny.json` beside the tiny model's weights (None when absent); CheckpointError if unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read the tiny model config {str(path)!r}: {error}") from error


def embedded_sampler_sigmas(path: Path, data: Any = None) -> tuple[float, ...]:
    """The σ list the tiny model was distilled for: `generator.sigmas` of `roam_tiny.json` (written by
    `python run.py train export`), else the official 4-step list. `data`: the file already parsed."""
    if data is None:
        data = _read_embedded_json(path)
    generator = data.get("generator") if isinstance(data, dict) else None
    if not isinstance(generator, dict) or "sigmas" not in generator:
        return distilled_sigmas()
    return check_sampler_sigmas(generator["sigmas"], f"{str(path)!r} (generator.sigmas)")


def sigmas_flag(text: str, flag: str = "--sigmas") -> tuple[float, ...]:
    """A command line's comma-separated sampler σ list, checked by `check_sampler_sigmas` (errors name `flag`)."""
    return check_sampler_sigmas(str(text).split(","), flag)


def model_sampler_sigmas(flag: str | None, weights: str | Path) -> tuple[float, ...]:
    """The sampler a tool runs: `--sigmas` when given, else the one `weights`' roam_tiny.json records (the app's)."""
    if flag is not None:
        return sigmas_flag(flag)
    return embedded_sampler_sigmas(Path(weights).with_suffix(".json"))


def _embedded_config_and_sampler(path: Path):
    """(ModelConfig, sampler σ list) from one read of `roam_tiny.json`: the `tiny` preset and the official
    4-step list when the file is absent."""
    from model.config import ModelConfig

    data = _read_embedded_json(path)
    if data is None:
        return ModelConfig.preset("tiny"), distilled_sigmas()
    return _embedded_config(path, data), embedded_sampler_sigmas(path, data)


def _embedded_config(path: Path, data: Any):
    """The tiny model's config from the parsed `roam_tiny.json` `data` (our field names, at the top level or
    under "model" / "config"); CheckpointError naming `path` when none is there."""
    from model.config import ModelConfig

    fields = set(ModelConfig.__dataclass_fields__)
    for candidate in (data, data.get("model") if isinstance(data, dict) else None,
                      data.get("config") if isinstance(data, dict) else None):
        if isinstance(candidate, dict) and candidate and set(candidate) <= fields:
            return ModelConfig.from_dict(candidate)
    raise CheckpointError(f"{str(path)!r} holds no ModelConfig (expected our field names at the top level or under "
                          f"'model' / 'config'); found keys {sorted(data)[:12] if isinstance(data, dict) else type(data).__name__}")
