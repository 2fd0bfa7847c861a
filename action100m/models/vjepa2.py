"""V-JEPA 2 video encoder (encoder only), with the model processor's preprocessing done in torch.

The processor resizes the shortest side to ``crop * 256 / 224``, centre-crops ``crop`` and applies
ImageNet normalisation; torchvision (which its video processor needs) does not load beside the CPU
torch, so the same steps are done here. Frames arrive already resized by the decoder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from action100m.models import load_once, pick_device, quiet_transformers, resolve_model

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

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto") -> None:
        import torch
        from transformers import AutoModel

        quiet_transformers()
        self.device = pick_device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device == "cuda" else "float32"
        self.dtype = getattr(torch, dtype)
        path = resolve_model(model, {"vjepa2": build_tiny_vjepa2})
        self.model = AutoModel.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        # Only the encoder runs (skip_predictor); free the predictor's memory.
        self.model.predictor = torch.nn.Identity()
        config = self.model.config
        self.crop_size: int = int(config.crop_size)
        self.resize_size: int = int(self.crop_size * 256 / 224)
        self.tubelet_size: int = int(config.tubelet_size)
        self.patch_size: int = int(config.patch_size)
        self.hidden_size: int = int(config.hidden_size)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 1, 3, 1, 1)
        log.info("V-JEPA 2 %s loaded on %s (%s)", model, self.device, dtype)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """(B, T, H, W, 3) uint8, shortest side already ``resize_size`` -> (B, T, 3, crop, crop)."""
        import torch

        video = torch.from_numpy(frames).to(self.device).permute(0, 1, 4, 2, 3)
        height, width = video.shape[-2:]
        if min(height, width) != self.resize_size:
            raise ValueError(
                f"frames must have shortest side {self.resize_size}, got {height}x{width}"
            )
        top = (height - self.crop_size) // 2
        left = (width - self.crop_size) // 2
        video = video[..., top : top + self.crop_size, left : left + self.crop_size]
        video = (video.float() / 255.0 - self.mean) / self.std
        return video.to(self.dtype)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """(B, T, H, W, 3) uint8 windows -> (B, T, D) float32: tokens mean-pooled over space per
        tubelet, then each tubelet's vector given to the frames it covers."""
        import torch

        batch, length = frames.shape[:2]
        with torch.inference_mode():
            tokens = self.model.get_vision_features(self.preprocess(frames))
        tubelets = length // self.tubelet_size
        pooled = tokens.float().reshape(batch, tubelets, -1, tokens.shape[-1]).mean(dim=2)
        per_frame = pooled.repeat_interleave(self.tubelet_size, dim=1)
        return per_frame.cpu().numpy()


def load_encoder(cfg: EmbedConfig) -> VJEPA2Encoder:
    """The encoder ``cfg`` names, loaded once per process."""
    identity = (cfg.model, cfg.device, cfg.dtype)
    return load_once(
        "vjepa2", identity, lambda: VJEPA2Encoder(cfg.model, cfg.device, cfg.dtype), cfg.model
    )
