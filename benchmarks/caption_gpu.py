"""Caption throughput on a GPU: the real-size Qwen3-VL-4B (random weights) on a realistic tree.

The tree is random but shaped like the pipeline's: binary, half leaves, ``--nodes-per-minute``
nodes per minute of video (80 by default: a one-hour video has about 4,800 nodes, and the target
is captioning that in under 10 GPU-minutes on one H100). Leaves get one frame, other nodes
``--frames`` frames, all ``--size`` square, through the same captioner code as the pipeline.
Frames are synthetic: this measures the model, not the decoder. Random weights never emit the end
token, so every answer is exactly ``--max-new-tokens`` long: pick a realistic caption length.

    python benchmarks/caption_gpu.py --minutes 5                  # transformers, random 4B
    python benchmarks/caption_gpu.py --backend vllm --model Qwen/Qwen3-VL-4B-Instruct
    python benchmarks/caption_gpu.py --tiny --minutes 1           # CPU smoke run of this script
    python benchmarks/caption_gpu.py --count-tokens               # prompt tokens, video vs images

``--count-tokens`` (CPU, no GPU needed) builds one segment request of ``--frames`` frames at
``--size`` both ways through the in-process captioner's encoding, with Qwen3-VL's vision geometry
(16-pixel patches, 2 frames per temporal patch, 2x2 merge), and counts the prompt's tokens by
kind. The text around them is the tiny tokenizer's, not Qwen's: vision tokens are exact, the
timestamp and prompt text counts approximate.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from action100m.config import CaptionConfig
from action100m.models.captioner import CaptionJob, make_captioner
from action100m.stages.caption_requests import plan_requests
from action100m.tree import Node, Tree, make_node_id

# Qwen3-VL-4B-Instruct's shape (config.json of the published checkpoint).
TEXT_4B = {
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 262144,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    },
}
VISION_4B = {
    "depth": 24,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_heads": 16,
    "patch_size": 16,
    "out_hidden_size": 2560,
    "num_position_embeddings": 2304,
    "deepstack_visual_indexes": [5, 11, 17],
}


def build_random_4b(path: Path) -> None:
    """Qwen3-VL-4B with random bf16 weights, the tiny tokenizer and the image processor."""
    import torch
    from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from action100m.models.qwen3vl import SPECIAL_TOKENS, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(path)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen3VLConfig(
        text_config=TEXT_4B,
        vision_config=VISION_4B,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    with torch.device("cuda"):
        model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    # An end token random weights will never pick: every answer runs to max_new_tokens.
    model.generation_config = GenerationConfig(do_sample=False, eos_token_id=ids["<|im_end|>"])
    model.save_pretrained(path)
    Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2).save_pretrained(
        path
    )
    del model
    torch.cuda.empty_cache()


def random_tree(minutes: float, nodes_per_minute: float, seed: int = 0) -> Tree:
    """A binary tree of contiguous spans with about ``minutes * nodes_per_minute`` nodes."""
    rng = random.Random(seed)
    duration = minutes * 60.0
    leaves_wanted = max(1, round(minutes * nodes_per_minute / 2))
    spans = [(0.0, duration)]
    while len(spans) < leaves_wanted:  # split the longest span at a random point
        spans.sort(key=lambda span: span[1] - span[0])
        start, end = spans.pop()
        cut = start + (end - start) * rng.uniform(0.3, 0.7)
        spans += [(start, cut), (cut, end)]
    spans.sort()
    nodes: list[Node] = []

    def grow(parts: list[tuple[float, float]], parent: str | None, level: int) -> str:
        start, end = parts[0][0], parts[-1][1]
        node = Node(make_node_id("bench", start, end), parent, level, start, end)
        nodes.append(node)
        if len(parts) > 1:
            middle = len(parts) // 2
            node.children = [
                grow(parts[:middle], node.node_id, level + 1),
                grow(parts[middle:], node.node_id, level + 1),
            ]
        return node.node_id

    grow(spans, None, 0)
    return Tree("bench", duration, 30.0, "synthetic", nodes)


class Clock:
    """Times prefill (until the first token's logits) and decode inside ``generate``."""

    def __init__(self) -> None:
        self.started = self.first = 0.0
        self.prefill = self.decode = 0.0

    def __call__(self, input_ids: Any, scores: Any) -> Any:  # a LogitsProcessor
        if not self.first:
            import torch

            torch.cuda.synchronize()
            self.first = time.perf_counter()
        return scores

    def wrap(self, net: Any) -> None:
        import torch
        from transformers import LogitsProcessorList

        generate = net.generate

        def timed(**kwargs: Any) -> Any:
            torch.cuda.synchronize()
            self.started, self.first = time.perf_counter(), 0.0
            output = generate(**kwargs, logits_processor=LogitsProcessorList([self]))
            torch.cuda.synchronize()
            self.prefill += self.first - self.started
            self.decode += time.perf_counter() - self.first
            return output

        net.generate = timed


def count_tokens(frames: int, size: int) -> dict[str, Any]:
    """Prompt tokens of one segment request sent as images and as one video, by kind."""
    from action100m.models.qwen3vl import TransformersCaptioner

    config = CaptionConfig(
        backend="transformers", model="tiny-random/qwen3vl", frames=frames, size=size, device="cpu"
    )
    captioner = TransformersCaptioner(config)
    picture = np.zeros((size, size, 3), np.uint8)
    tokenizer = captioner.tokenizer
    starts = tokenizer.convert_tokens_to_ids("<|vision_start|>")
    counts: dict[str, Any] = {"frames": frames, "size": size}
    for shape, fps in (("images", None), ("video", frames / 10.0)):
        prompt = plan_requests(random_tree(1, 2), config)[0].prompt
        job = CaptionJob("k", prompt, [picture] * frames, 1, fps)
        inputs = captioner.encode([job])
        ids, kinds = inputs["input_ids"][0], inputs["mm_token_type_ids"][0]
        text = tokenizer.decode(ids)
        counts[shape] = {
            "total": int(ids.numel()),
            "vision": int((kinds > 0).sum()),
            "vision_start_end": 2 * int((ids == starts).sum()),
            "timestamps": text.count(" seconds>"),
        }
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--model", help="repo id or folder (default: random-weight 4B)")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--nodes-per-minute", type=float, default=80.0)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="transformers batch")
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke run)")
    parser.add_argument("--frames-as", choices=["video", "images"], default="video")
    parser.add_argument("--count-tokens", action="store_true", help="prompt tokens only (CPU)")
    args = parser.parse_args()
    if args.count_tokens:
        print(json.dumps(count_tokens(args.frames, args.size), indent=1))
        return

    import torch

    if not args.tiny and not torch.cuda.is_available():
        sys.exit("caption_gpu.py needs a CUDA GPU (use --tiny for a CPU smoke run of the script)")
    if args.backend == "vllm" and not args.model:
        sys.exit("--backend vllm needs --model: a real checkpoint (repo id or local folder)")
    workdir = tempfile.TemporaryDirectory(prefix="caption-bench-")
    model = args.model or ("tiny-random/qwen3vl" if args.tiny else workdir.name)
    if not args.model and not args.tiny:
        started = time.perf_counter()
        build_random_4b(Path(workdir.name))
        print(f"built random Qwen3-VL-4B in {time.perf_counter() - started:.0f} s", flush=True)
    config = CaptionConfig(
        backend=args.backend,
        model=model,
        frames=args.frames,
        size=args.size,
        max_new_tokens=args.max_new_tokens,
        concurrency=args.batch_size,
        device="cpu" if args.tiny else "cuda",
        frames_as=args.frames_as,
    )
    tree = random_tree(args.minutes, args.nodes_per_minute)
    plans = plan_requests(tree, config)
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 255, (64, args.size, args.size, 3), dtype=np.uint8)
    jobs = [
        CaptionJob(
            plan.key,
            plan.prompt,
            [palette[rng.integers(64)] for _ in plan.times],
            args.max_new_tokens,
            plan.fps,
        )
        for plan in plans
    ]
    captioner = make_captioner(config)
    clock = Clock()
    if args.backend == "transformers" and not args.tiny:
        clock.wrap(captioner.net)  # type: ignore[attr-defined]
    warm = [job for job in jobs if len(job.frames) > 1][:1] or jobs[:1]
    list(captioner.run(warm))  # compile kernels, allocate caches
    clock.prefill = clock.decode = 0.0
    started = time.perf_counter()
    outcomes = [outcome for _, outcome in captioner.run(jobs)]
    elapsed = time.perf_counter() - started
    tokens_in = sum(o.tokens_in for o in outcomes)
    tokens_out = sum(o.tokens_out for o in outcomes)
    result = {
        "backend": args.backend,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "model": args.model or ("tiny" if args.tiny else "random Qwen3-VL-4B (bf16)"),
        "nodes": len(tree),
        "leaves": len(tree.leaves()),
        "seconds": round(elapsed, 1),
        "nodes_per_s": round(len(outcomes) / elapsed, 2),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "errors": sum(o.error is not None for o in outcomes),
        "projected_minutes_for_4800_nodes": round(4800 / (len(outcomes) / elapsed) / 60, 1),
    }
    if clock.prefill:
        result["prefill_tokens_per_s"] = round(tokens_in / clock.prefill)
        result["decode_tokens_per_s"] = round(tokens_out / clock.decode)
    else:
        result["tokens_per_s"] = round((tokens_in + tokens_out) / elapsed)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
