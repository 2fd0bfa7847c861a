"""Validated settings: defaults from the paper (docs/architecture.md), overridden by YAML,
environment, the deployment's connections and ``--set``.

Precedence (last wins): profile defaults < YAML file < ``ACTION100M_SECTION__KEY`` < deployment
(endpoints and models from Airflow connections) < ``--set``. Each section's :meth:`identity` feeds
its stage's key (:func:`action100m.stages.stage_key`), so changing a caption model re-runs caption
and later stages only. Secrets are not settings: see :mod:`action100m.services`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from action100m.errors import ConfigError
from action100m.sections import AggregateConfig, _Section

__all__ = ["AggregateConfig", "Settings", "load_settings", "parse_assignments"]

ENV_PREFIX = "ACTION100M_"
TINY_PREFIX = "tiny-random/"


class EmbedConfig(_Section):
    # dtype and decoder change results only in rounding, not in what is computed.
    runtime_fields: ClassVar[frozenset[str]] = frozenset(
        {"batch_size", "device", "dtype", "decoder", "prefetch", "attn_implementation", "compile",
         "backend", "service_url", "convert"}
    )  # fmt: skip
    model: str = "facebook/vjepa2-vitg-fpc64-384"
    # Where the encoder runs: in the task's process (loaded per process), or in an encoder
    # service that keeps it loaded across tasks (`action100m serve-encoder`; under Airflow its
    # address is the connection encoder_default). Same vectors either way: not in the key.
    backend: Literal["local", "service"] = "local"
    service_url: str = "http://127.0.0.1:8100"
    frame_step: int = Field(4, ge=1, description="keep 1 of every N decoded frames")
    window: int = Field(64, ge=2, description="sampled frames per encoder window")
    stride: int = Field(8, ge=1, description="sampled frames between window starts")
    batch_size: int = Field(4, ge=1, description="windows per forward pass")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    decoder: Literal["pyav", "decord"] = Field(
        "pyav", description="tried first; the other one takes over where it fails"
    )
    prefetch: int = Field(
        128, ge=0, description="sampled frames decoded ahead in a thread (0: in series)"
    )
    # Rounding only, like dtype: transformers' default (auto: sdpa, which picks flash or cuDNN
    # kernels on a GPU by itself), its own loop (eager), or the flash-attn package's kernel.
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    compile: bool = Field(False, description="torch.compile the encoder on its first windows")
    # Rounding only (within 2 of 255 of swscale's pixels): where YUV becomes the model's RGB.
    convert: Literal["cpu", "device"] = Field(
        "cpu",
        description="cpu: swscale in the decoding thread; device: the crop's YUV planes are sent "
        "and converted by the encoder (for a GPU; PyAV only)",
    )

    @model_validator(mode="after")
    def _windows_cover_every_frame(self) -> EmbedConfig:
        if self.stride > self.window:
            raise ValueError(
                f"embed.stride ({self.stride}) must not exceed embed.window ({self.window}): "
                "frames between windows would get no vector"
            )
        return self


class SegmentConfig(_Section):
    min_duration: float = Field(0.5, gt=0, description="prune segments shorter than this, seconds")


class CaptionConfig(_Section):
    runtime_fields: ClassVar[frozenset[str]] = frozenset(
        {"base_url", "concurrency", "timeout", "max_retries", "device", "api_key_env"}
    )
    backend: Literal["vllm-server", "vllm", "transformers"] = "vllm-server"
    model: str = "cpatonn/Qwen3-VL-4B-Instruct-AWQ-4bit"
    base_url: str = "http://localhost:8000/v1"
    api_key_env: str = "VLLM_API_KEY"
    # Requests in flight per caption task. vLLM batches the requests it holds: the 4B model's KV
    # cache (147 kB a token) fits about 60 segment requests of ~3.5k tokens in 0.5 of an 80 GB
    # GPU, so 16 from a lone task left most of each batch empty; 64 fill it, and with the vlm
    # pool's 4 tasks the surplus waits in vLLM's queue, ready as a slot frees. ~10 MB of frames
    # each on the worker.
    concurrency: int = Field(64, ge=1)
    frames: int = Field(32, ge=1, description="frames per segment caption")
    # How a segment's frames reach the model: one video (Qwen3-VL merges each pair of frames, so
    # about half the prompt tokens of separate images) or separate images, for models without a
    # video input. A leaf's middle frame is always an image.
    frames_as: Literal["video", "images"] = "video"
    size: int = Field(320, ge=16, description="frame side in pixels")
    max_new_tokens: int = Field(1024, ge=1)
    # The release's fields: a leaf's middle frame (llama3_caption) and its clip (plm_caption),
    # and a short action label for every node (plm_action), asked over the same frames.
    leaf_segment_caption: bool = True
    action: bool = True
    action_max_new_tokens: int = Field(32, ge=1)
    timeout: float = Field(300.0, gt=0)
    max_retries: int = Field(3, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _a_video_has_frames_to_pair(self) -> CaptionConfig:
        if self.frames_as == "video" and self.frames < 2:
            raise ValueError(
                f"caption.frames_as=video needs caption.frames >= 2 (got {self.frames}): Qwen3-VL "
                "takes a video's frames in pairs; use caption.frames_as=images"
            )
        return self

    def identity(self) -> dict[str, Any]:
        found = super().identity()
        if self.frames_as == "images":  # what was sent before the setting: those keys stay
            del found["frames_as"]
        return found


YOUTUBE_HOSTS = ("youtube.com", "www.youtube.com", "m.youtube.com", "music.youtube.com",
                 "youtu.be", "www.youtube-nocookie.com")  # fmt: skip


class FetchConfig(_Section):
    """The fetch stage (yt-dlp); only the height, languages and ASR choice make its key."""

    runtime_fields: ClassVar[frozenset[str]] = frozenset(
        {"allowed_hosts", "rate_limit", "sleep_requests", "retries", "retry_wait",
         "socket_timeout", "asr_base_url", "asr_api_key_env", "asr_device"}
    )  # fmt: skip
    max_height: int = Field(480, ge=144, description="download at most this many lines")
    subtitle_langs: list[str] = Field(
        default_factory=lambda: ["en"], description="automatic captions, in this order"
    )
    # The deployment's (never a run's): a run must not make a worker fetch internal addresses.
    allowed_hosts: list[str] = Field(default_factory=lambda: list(YOUTUBE_HOSTS))
    rate_limit: int | None = Field(None, ge=1, description="bytes per second per download")
    sleep_requests: float = Field(0.0, ge=0, description="seconds between HTTP requests")
    retries: int = Field(3, ge=0, description="tries again after 429, 5xx and network errors")
    retry_wait: float = Field(5.0, ge=0, description="first wait between tries, doubling")
    socket_timeout: float = Field(30.0, gt=0)
    asr: bool = Field(False, description="speech recognition where a video has no subtitles")
    asr_backend: Literal["api", "transformers"] = "transformers"
    asr_model: str = "openai/whisper-large-v3-turbo"
    asr_base_url: str | None = None
    asr_api_key_env: str = "OPENAI_API_KEY"
    asr_chunk_seconds: float = Field(30.0, gt=1, le=600, description="audio per request")
    asr_device: Literal["auto", "cpu", "cuda"] = "auto"

    def identity(self) -> dict[str, Any]:
        found = super().identity()
        if not self.asr:  # the recogniser's settings shape nothing while it is off
            found = {k: v for k, v in found.items() if not k.startswith("asr_")}
        return found

    @field_validator("subtitle_langs", "allowed_hosts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:  # a comma-separated string (--set, the environment)
        parts = re.split(r"[\s,]+", value) if isinstance(value, str) else value
        return [str(p).lower().strip(".") for p in parts if p] if isinstance(parts, list) else parts


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    store: str = Field(default_factory=lambda: Path("./artifacts").resolve().as_uri())
    profile: Literal["paper", "tiny"] = "paper"
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    aggregate: AggregateConfig = Field(default_factory=AggregateConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)

    def section(self, name: str) -> _Section:
        """The settings section a stage reads (``embed``, ``caption``, ...)."""
        value = getattr(self, name, None)
        if not isinstance(value, _Section):
            raise ValueError(f"no settings section {name!r}")
        return value

    def summary(self) -> dict[str, Any]:
        """What the per-video document records of the settings that shaped it."""
        return {name: value.identity() for name, value in self if isinstance(value, _Section)}


PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": {
        "embed": {"model": TINY_PREFIX + "vjepa2", "batch_size": 8, "device": "cpu"},
        "caption": {
            "backend": "transformers",
            "model": TINY_PREFIX + "qwen3vl",
            "max_new_tokens": 16,
            "frames": 8,
            "size": 64,
            "device": "cpu",
        },
    },
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(tree: dict[str, Any], dotted: str, raw: Any) -> None:
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        raise ConfigError(f"empty setting name in {dotted!r}")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted!r}: {part!r} is not a section")
    # YAML parsing types the value: "8" -> 8, "true" -> True, "[1, 2]" -> list.
    node[parts[-1]] = yaml.safe_load(raw) if isinstance(raw, str) else raw


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``["caption.model=x", ...]`` -> nested dict."""
    tree: dict[str, Any] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        _set_path(tree, name.strip(), value)
    return tree


def _from_environment(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        if dotted in ("store", "profile") or "." in dotted:
            _set_path(tree, dotted, value)
    return tree


def load_settings(
    *,
    profile: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    store: str | None = None,
    environ: dict[str, str] | None = None,
    deployment: dict[str, Any] | None = None,
) -> Settings:
    """Build the settings from every source, validated; bad values raise ConfigError."""
    env = dict(os.environ if environ is None else environ)
    layers: list[dict[str, Any]] = []
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping")
        layers.append(loaded)
    layers.append(_from_environment(env))
    if deployment:
        layers.append(deployment)
    if isinstance(overrides, dict):
        layers.append(overrides)
    elif overrides:
        layers.append(parse_assignments(overrides))
    if store:
        layers.append({"store": store})
    if profile:
        layers.append({"profile": profile})

    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer)
    chosen = merged.get("profile", "paper")
    if chosen not in PROFILE_DEFAULTS:
        raise ConfigError(f"unknown profile {chosen!r}; choose one of {sorted(PROFILE_DEFAULTS)}")
    merged = _merge(PROFILE_DEFAULTS[chosen], merged)
    try:
        return Settings.model_validate(merged)
    except Exception as exc:  # pydantic.ValidationError, flattened into one clear line
        raise ConfigError(f"invalid settings: {exc}".replace("\n", " ")) from exc
