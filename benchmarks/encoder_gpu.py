"""Real-size V-JEPA 2 ViT-g/384 encoder (random weights) on a GPU: windows/s and TFLOP/s.

Random weights give true timings. A window is 64 frames at 384x384 (tubelet 2, patch 16: 18,432
tokens), about 114 TFLOP through the 40-layer ViT-g; an H100 does about 790 TFLOP/s of bf16
matrix work, so the floor is about 0.15 s a window. Record results in benchmarks/RESULTS.md.

    python benchmarks/encoder_gpu.py [--batch-sizes 1 2 4] [--dtype bfloat16]
    python benchmarks/encoder_gpu.py --smoke      # tiny width on CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import time

VITG_384 = dict(
    crop_size=384,
    frames_per_clip=64,
    patch_size=16,
    tubelet_size=2,
    hidden_size=1408,
    num_hidden_layers=40,
    num_attention_heads=22,
    mlp_ratio=48 / 11,
)
SMOKE = dict(
    crop_size=64,
    frames_per_clip=16,
    patch_size=16,
    tubelet_size=2,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    mlp_ratio=2,
)


def window_flops(cfg: dict, frames: int) -> float:
    """Forward FLOPs of the encoder for one window (matmuls only: QKV/out, MLP, attention)."""
    tokens = (frames // cfg["tubelet_size"]) * (cfg["crop_size"] // cfg["patch_size"]) ** 2
    d, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    mlp = int(d * cfg["mlp_ratio"])
    per_layer = 2 * tokens * (4 * d * d + 2 * d * mlp) + 4 * tokens * tokens * d
    patch = 2 * tokens * d * 3 * cfg["tubelet_size"] * cfg["patch_size"] ** 2
    return float(layers * per_layer + patch)


def main() -> None:
    import torch
    from transformers import VJEPA2Config, VJEPA2Model

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny width on CPU")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("encoder_gpu.py needs a CUDA GPU (use --smoke to check the script on CPU)")
    device = "cpu" if args.smoke else "cuda"
    cfg = SMOKE if args.smoke else VITG_384
    dtype = torch.float32 if args.smoke else getattr(torch, args.dtype)
    model = VJEPA2Model(VJEPA2Config(**cfg, pred_num_hidden_layers=1)).to(device, dtype).eval()
    frames = cfg["frames_per_clip"]
    flops = window_flops(cfg, frames)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    print(f"device: {name}; dtype {dtype}; {flops / 1e12:.1f} TFLOP per window")
    print(f"{'batch':>6} {'s/window':>9} {'windows/s':>10} {'TFLOP/s':>8} {'peak GiB':>9}")
    for batch in args.batch_sizes:
        video = torch.randn(batch, frames, 3, cfg["crop_size"], cfg["crop_size"], device=device)
        video = video.to(dtype)
        try:
            with torch.inference_mode():
                model.get_vision_features(video)  # warm-up
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                started = time.perf_counter()
                for _ in range(args.iters):
                    model.get_vision_features(video)
                if device == "cuda":
                    torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            print(f"{batch:>6} out of memory")
            break
        per_window = (time.perf_counter() - started) / (args.iters * batch)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        print(
            f"{batch:>6} {per_window:>9.3f} {1 / per_window:>10.2f} "
            f"{flops / per_window / 1e12:>8.1f} {peak:>9.1f}"
        )


if __name__ == "__main__":
    main()
