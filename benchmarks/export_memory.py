"""Peak memory of a dataset export against its size: the sharded export (``export --out DIR/``)
against the single-file one, each in a fresh process, on synthetic stores of growing size.

Each store holds N published documents of ``--nodes`` nodes (captions and annotations of the
release's typical lengths), plus one video of an hour (5,000 nodes). The sharded export must stay
flat in N; the single file grows with it.

    python benchmarks/export_memory.py [--videos 500 2000 8000] [--nodes 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTION = "A person at a wooden table cuts paper with scissors and glues it into a notebook. " * 4
DETAILED = "The hands arrange the pieces, press them flat and write a date beside them. " * 10


def synthetic_document(video_id: str, nodes: int) -> dict:
    """A binary tree of ``nodes`` nodes (breadth-first), a second per leaf-ish, filled fields."""
    duration = float(max(nodes, 2))
    rows = [{"node_id": f"{video_id}-0", "parent_id": None, "level": 0, "start": 0.0,
             "end": duration}]  # fmt: skip
    for index in range(1, nodes):
        parent = rows[(index - 1) // 2]
        middle = (parent["start"] + parent["end"]) / 2
        first = index % 2 == 1
        rows.append({
            "node_id": f"{video_id}-{index}", "parent_id": parent["node_id"],
            "level": parent["level"] + 1,
            "start": parent["start"] if first else middle,
            "end": middle if first else parent["end"],
        })  # fmt: skip
    parents = {r["parent_id"] for r in rows}
    for row in rows:
        leaf = row["node_id"] not in parents
        row.update(caption=CAPTION, caption_kind="frame" if leaf else "segment",
                   segment_caption=CAPTION if leaf else None, caption_action="cut paper")  # fmt: skip
        long = not leaf and row["end"] - row["start"] >= 4
        row["annotation"] = (
            {"brief_action": "cut paper", "detailed_action": DETAILED, "actor": "a person",
             "brief_caption": CAPTION[:90], "detailed_caption": DETAILED} if long else None
        )  # fmt: skip
    metadata = {"title": video_id, "description": DETAILED, "duration": duration,
                "transcript": [{"time": f"{t:.2f}", "text": CAPTION[:60]} for t in range(60)]}  # fmt: skip
    return {"video_uid": video_id, "metadata": metadata, "nodes": rows, "pipeline": {}}


def make_store(folder: Path, videos: int, nodes: int) -> None:
    for index in range(videos):
        video_id = f"v{index:06d}"
        target = folder / "videos" / video_id / "annotations.json"
        target.parent.mkdir(parents=True)
        target.write_text(json.dumps(synthetic_document(video_id, nodes)))
    hour = folder / "videos" / "one_hour" / "annotations.json"
    hour.parent.mkdir(parents=True)
    hour.write_text(json.dumps(synthetic_document("one_hour", 5000)))


PROBE = """
import resource, sys, time
from action100m.store import ArtifactStore
store, out, mode = ArtifactStore(sys.argv[1]), sys.argv[2], sys.argv[3]
started = time.perf_counter()
if mode == "shards":
    from action100m.shards import export_shards
    export_shards(store, out + "/")
else:
    from action100m.config import load_settings
    from action100m.interop import export
    export(load_settings(environ={}), store, "action100m", out + ".parquet")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - started)
"""


def measure(store: Path, out: Path, mode: str) -> tuple[float, float]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(store), str(out), mode],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    peak, seconds = done.stdout.split()
    return float(peak), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--nodes", type=int, default=100)
    args = parser.parse_args()
    print(f"{'videos':>7} {'nodes':>9}  {'sharded MB':>10} {'s':>6}  {'one file MB':>11} {'s':>6}")
    for videos in args.videos:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            make_store(Path(folder) / "store", videos, args.nodes)
            made = time.perf_counter() - started
            shard = measure(Path(folder) / "store", Path(folder) / "shards", "shards")
            single = measure(Path(folder) / "store", Path(folder) / "single", "single")
            total = videos * args.nodes + 5000
            print(f"{videos:>7} {total:>9}  {shard[0]:>10.0f} {shard[1]:>6.1f}  "
                  f"{single[0]:>11.0f} {single[1]:>6.1f}   (store made in {made:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
