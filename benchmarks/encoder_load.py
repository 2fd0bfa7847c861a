"""Encoder load: seconds from an embed task's start (a fresh Python process, as Airflow 3 starts
every task) to its first encoded window, cold (embed.backend=local: imports, model load, first
window) and warm (embed.backend=service: the encoder service already up; the task is a thin
client). Each task runs the embed stage through the runner, on its own store, as a DAG task does.

    python benchmarks/encoder_load.py                 # the tiny random V-JEPA 2 (CPU)
    python benchmarks/encoder_load.py --model vitg    # ViT-g width and depth, random, bf16

``vitg`` builds (once, into ACTION100M_CACHE/bench/) a random V-JEPA 2 with the real ViT-g/384
encoder's width and depth (1408 wide, 40 layers, 22 heads: the same 1.0B weights) and saves it
in bf16, the way the stage keeps its converted copy, then loads it with ``from_pretrained`` from
that folder. So that the window's compute does not hide the load on a CPU box, it runs on 64 px
crops, 2-frame windows and a 1 s clip (the weights depend on none of them): a first window
takes seconds there, as a real 384 px, 64-frame one does on a GPU (0.15-0.6 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MOMENTS = ("imported", "loaded", "first", "done")
VITG = dict(hidden_size=1408, num_hidden_layers=40, num_attention_heads=22, mlp_ratio=48 / 11)


def vitg_folder(cache: Path) -> Path:
    """The random ViT-g-sized V-JEPA 2, saved in bf16 (built once)."""
    target = cache / "bench" / "vjepa2-vitg-random-bf16"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import VJEPA2Config, VJEPA2Model

    torch.manual_seed(0)
    config = VJEPA2Config(crop_size=64, frames_per_clip=16, patch_size=16, tubelet_size=2, **VITG,
                          pred_num_hidden_layers=1)  # fmt: skip
    model = VJEPA2Model(config).to(torch.bfloat16).eval()
    scratch = Path(tempfile.mkdtemp(dir=cache))
    model.save_pretrained(scratch)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch.rename(target)
    return target


def overrides(model: str, cache: Path) -> list[str]:
    if model == "tiny":
        return []
    return [f"embed.model={vitg_folder(cache)}", "embed.dtype=bfloat16", "embed.window=2",
            "embed.stride=2", "embed.batch_size=1"]  # fmt: skip


def child(args: argparse.Namespace) -> None:
    """One embed task: print the wall-clock times it was ready to work and saw its first window."""
    seen: dict[str, float] = {}

    class Moments(logging.Handler):  # when the model was loaded, when the first window came
        def emit(self, record: logging.LogRecord) -> None:
            for moment, words in (("loaded", "loaded in"), ("first", "encoded")):
                if words in record.getMessage():
                    seen.setdefault(moment, record.created)

    logging.getLogger("action100m").addHandler(Moments())
    logging.getLogger("action100m").setLevel(logging.INFO)
    from pydantic import SecretStr

    from action100m.config import load_settings
    from action100m.services import Endpoint, Services
    from action100m.stages import get_stage
    from action100m.stages.base import Runtime, Video, run_stage
    from action100m.store import ArtifactStore

    imported = time.time()
    sets = [*args.set, f"embed.backend={args.child}", f"embed.service_url={args.url}"]
    settings = load_settings(profile="tiny", store=args.store, overrides=sets, environ={})
    services = Services(encoder=Endpoint(api_key=SecretStr(args.key)))
    runtime = Runtime(settings, ArtifactStore(args.store), services)
    run_stage(get_stage("embed"), runtime, Video("bench", args.video))
    seen.setdefault("loaded", imported)  # a service task loads nothing
    print(json.dumps({"imported": imported, **seen, "done": time.time()}))


def task(mode: str, video: str, store: str, sets: list[str], url: str, key: str) -> dict:
    """Start one task process; its times relative to its start."""
    command = [sys.executable, __file__, "--child", mode, "--video", video, "--store", store,
               "--url", url, "--key", key] + [f"--set={s}" for s in sets]  # fmt: skip
    started = time.time()
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    times = json.loads(out.strip().splitlines()[-1])
    return {name: times[name] - started for name in MOMENTS}


def start_service(store: str, sets: list[str], port: int, key: str, log: Path) -> tuple:
    env = {**os.environ, "ACTION100M_ENCODER_API_KEY": key,
           "ACTION100M_ALLOWED_SOURCES": str(Path(store).parent)}  # fmt: skip
    command = [sys.executable, "-m", "action100m.cli", "--profile", "tiny", "--store", store,
               *[f"--set={s}" for s in sets], "serve-encoder", "--port", str(port)]  # fmt: skip
    started = time.monotonic()
    with log.open("wb") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    request = urllib.request.Request(f"http://127.0.0.1:{port}/health",
                                     headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    while server.poll() is None:
        try:
            with urllib.request.urlopen(request, timeout=2):
                return server, time.monotonic() - started
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the encoder service exited: {log.read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=["tiny", "vitg"], default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=8179)
    parser.add_argument("--child", choices=["local", "service"], help=argparse.SUPPRESS)
    for hidden in ("--video", "--store", "--url", "--key"):  # a task's (--child) arguments
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.child:
        return child(parser.parse_args())
    from action100m.models import cache_dir
    from action100m.samples import make_video

    sets, work = overrides(args.model, cache_dir()), Path(tempfile.mkdtemp(prefix="encload-"))
    video, key, url = str(work / "in" / "clip.mp4"), "bench-key", f"http://127.0.0.1:{args.port}"
    make_video(work / "in" / "clip.mp4", [4.0, 4.0] if args.model == "tiny" else [1.0])
    print(f"model {args.model}; {os.cpu_count()} CPUs; times from the task process's start")
    rows = {"local": [], "service": []}
    server, ready = start_service(str(work / "served"), sets, args.port, key, work / "svc.log")
    try:
        for i in range(args.repeats):  # interleaved: both feel the same background load
            for mode in rows:
                rows[mode].append(task(mode, video, str(work / f"{mode}{i}"), sets, url, key))
    finally:
        os.killpg(server.pid, 2)
        server.wait(timeout=60)
    print(f"service start (one-off: imports, load, workers): {ready:.1f} s")
    print(f"{'task':>8} {'imports s':>10} {'model loaded s':>15} {'first window s':>15} "
          f"{'done s':>8}")  # fmt: skip
    for mode, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in MOMENTS}
        print(f"{mode:>8} {med['imported']:>10.2f} {med['loaded']:>15.2f} {med['first']:>15.2f} "
              f"{med['done']:>8.2f}")  # fmt: skip
    ratio = statistics.median(r["first"] for r in rows["local"]) / statistics.median(
        r["first"] for r in rows["service"]
    )
    print(f"first window: warm service {ratio:.1f}x sooner than cold (medians of {args.repeats})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
