"""V-JEPA 2 video encoder (encoder only), with the model processor's preprocessing done in torch.

The processor resizes the shortest side to ``crop * 256 / 224``, centre-crops ``crop`` and applies
ImageNet normalisation; torchvision (which its video processor needs) does not load beside the CPU
torch, so the same steps are done here. Frames arrive resized by the decoder and centre-cropped by
the stage (``centre_crop``): only the crop travels to the device. With ``embed.convert=device``
they arrive as the crop's YUV planes instead (``planes.cut``) and are resized and turned into RGB
here, on the device (``planes.Converter``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from action100m.errors import ConfigError
from action100m.models import (
    converted_dir,
    load_once,
    pick_device,
    quiet_transformers,
    resolve_model,
    save_converted,
)
from action100m.planes import Converter, PlaneCrop

if TYPE_CHECKING:
    import torch

    from action100m.config import EmbedConfig

log = logging.getLogger(__name__)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_tiny_vjepa2(path: Path) -> None:
    """A 183k-parameter V-JEPA 2 with the real architecture, random weights."""
    import torch
    from transformers import VJEPA2Config, VJEPA2Model

    torch.manual_seed(0)
    config = VJEPA2Config(
        crop_size=64,
        frames_per_clip=16,
        patch_size=16,
        tubelet_size=2,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,
        pred_hidden_size=32,
        pred_num_hidden_layers=1,
        pred_num_attention_heads=2,
    )
    VJEPA2Model(config).eval().save_pretrained(path)


class VJEPA2Encoder:
    """Loads once; ``encode`` turns windows of frames into one vector per frame."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str = "auto",
        compile: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModel

        quiet_transformers()
        self.device = pick_device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        path = resolve_model(model, {"vjepa2": build_tiny_vjepa2})
        kernel = (
            {} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}
        )
        if attn_implementation == "flash_attention_2":
            from transformers.utils import is_flash_attn_2_available

            if not is_flash_attn_2_available():
                raise ConfigError(
                    "embed.attn_implementation=flash_attention_2 is not available here (it needs "
                    "the flash-attn package and a CUDA GPU); use auto or sdpa"
                )
        # Weights stored in another dtype (the hub's fp32) are converted once and kept.
        converted = converted_dir(model, dtype) if dtype != "float32" else None
        ready = converted is not None and (converted / "config.json").exists()
        source = str(converted) if ready else path
        loaded = AutoModel.from_pretrained(source, dtype=self.dtype, **kernel)
        if converted is not None and not ready:
            save_converted(loaded, converted)
        self.model = loaded.to(self.device).eval()
        if compile:  # compiled on the first windows, reused for the rest of the process
            self.model.encoder.compile()
        # Only the encoder runs (skip_predictor); free the predictor's memory.
        self.model.predictor = torch.nn.Identity()
        config = self.model.config
        self.crop_size: int = int(config.crop_size)
        self.resize_size: int = int(self.crop_size * 256 / 224)
        self.tubelet_size: int = int(config.tubelet_size)
        self.patch_size: int = int(config.patch_size)
        self.hidden_size: int = int(config.hidden_size)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device)
        self.std = torch.tensor(IMAGENET_STD, device=self.device)
        self._staging: torch.Tensor | None = None  # pinned upload buffer (CUDA)
        self._uploaded: torch.cuda.Event | None = None  # its last copy to the device
        self._converters: dict[PlaneCrop, Converter] = {}  # per video: its filter weights
        log.info(
            "V-JEPA 2 %s loaded on %s (%s, attention %s%s)",
            model,
            self.device,
            dtype,
            self.model.config._attn_implementation,
            ", compiled" if compile else "",
        )

    def centre_crop(self, frame: np.ndarray) -> np.ndarray:
        """The ``crop`` x ``crop`` centre of one (H, W, 3) frame whose shortest side is
        ``resize_size``, copied: only the pixels the model sees are kept and sent on."""
        height, width = frame.shape[:2]
        top, left = (height - self.crop_size) // 2, (width - self.crop_size) // 2
        return np.ascontiguousarray(frame[top : top + self.crop_size, left : left + self.crop_size])

    def preprocess(self, frames: np.ndarray, planes: PlaneCrop | None = None) -> torch.Tensor:
        """(..., H, W, 3) uint8, shortest side already ``resize_size`` (or already centre-cropped
        to ``crop``), or packed planes cut by ``planes`` -> (..., 3, crop, crop) normalised, on
        the device."""
        return self._normalise(self._upload(frames), planes)

    def _normalise(self, video: torch.Tensor, planes: PlaneCrop | None = None) -> torch.Tensor:
        mean, std = self.mean.view(3, 1, 1), self.std.view(3, 1, 1)
        if planes is not None:
            if planes.crop != self.crop_size:
                raise ValueError(
                    f"planes cut for a {planes.crop} crop, the model takes {self.crop_size}"
                )
            if planes not in self._converters:
                self._converters[planes] = Converter(planes, self.device)
            rgb = self._converters[planes](video)
            return ((rgb / 255.0 - mean) / std).to(self.dtype)
        video = video.movedim(-1, -3)
        height, width = video.shape[-2:]
        if (height, width) != (self.crop_size, self.crop_size):
            if min(height, width) != self.resize_size:
                raise ValueError(
                    f"frames must have shortest side {self.resize_size}, got {height}x{width}"
                )
            top = (height - self.crop_size) // 2
            left = (width - self.crop_size) // 2
            video = video[..., top : top + self.crop_size, left : left + self.crop_size]
        return ((video.float() / 255.0 - mean) / std).to(self.dtype)

    def _upload(self, frames: np.ndarray) -> torch.Tensor:
        """``frames`` on the device: on CUDA through a pinned buffer, without blocking (the buffer
        is refilled only once its last copy has finished); on the CPU the array itself."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device != "cuda":
            return tensor
        if self._uploaded is not None:
            self._uploaded.synchronize()
        if self._staging is None or self._staging.numel() < tensor.numel():
            self._staging = torch.empty(tensor.numel(), dtype=torch.uint8, pin_memory=True)
        staging = self._staging[: tensor.numel()].view(tensor.shape)
        staging.copy_(tensor)
        on_device = staging.to(self.device, non_blocking=True)
        self._uploaded = torch.cuda.Event()
        self._uploaded.record()
        return on_device

    def submit(
        self,
        span: np.ndarray,
        offsets: Sequence[int],
        window: int,
        *,
        planes: PlaneCrop | None = None,
    ) -> Features:
        """Encode the windows ``span[o : o + window]`` (o in ``offsets``) of a (N, H, W, 3) span
        (or of packed planes cut by ``planes``): the span goes to the device once and the windows
        are built there. Returns (B, window, D) float32 vectors: tokens mean-pooled over space
        per tubelet, then each tubelet's vector given to the frames it covers. On CUDA the result
        is read only when asked for."""
        import torch

        with torch.inference_mode():
            frames = self._normalise(self._upload(span), planes)
            index = torch.as_tensor(offsets, device=self.device)[:, None]
            windows = frames[index + torch.arange(window, device=self.device)]
            tokens = self.model.get_vision_features(windows)
            tubelets = window // self.tubelet_size
            shape = (len(offsets), tubelets, -1, tokens.shape[-1])
            pooled = tokens.float().reshape(shape).mean(dim=2)
            per_frame = pooled.repeat_interleave(self.tubelet_size, dim=1)
        return Features(per_frame)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """(B, T, H, W, 3) uint8 windows -> (B, T, D) float32 (see :meth:`submit`)."""
        batch, length = frames.shape[:2]
        span = frames.reshape(batch * length, *frames.shape[2:])
        return self.submit(span, range(0, batch * length, length), length).result()


class Features:
    """An encoder's result: on CUDA copied into pinned memory without blocking, then waited for
    only when read (one wait per batch of windows); on the CPU already there."""

    def __init__(self, tensor: torch.Tensor) -> None:
        import torch

        self.event = None
        if tensor.device.type == "cuda":
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
            tensor = host
        self.tensor = tensor

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.tensor.numpy()


def load_encoder(cfg: EmbedConfig) -> VJEPA2Encoder:
    """The encoder ``cfg`` names, loaded once per process."""
    identity = (cfg.model, cfg.device, cfg.dtype, cfg.attn_implementation, cfg.compile)
    return load_once(
        "vjepa2",
        identity,
        lambda: VJEPA2Encoder(*identity[:-1], compile=cfg.compile),
        cfg.model,
    )
