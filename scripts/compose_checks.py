"""airflow-init's checks before anything starts (as in Airflow's reference compose file): the
user the containers run as, memory, CPUs, and free disk for the model cache. Prints a warning per
problem; exits 1 only for a root AIRFLOW_UID, which leaves files the workers cannot write."""

from __future__ import annotations

import os
import shutil
import sys

GIB = 1 << 30
MIN_MEMORY = 4 * GIB  # Airflow's reference minimum for the whole stack
MIN_CPUS = 2
MIN_CACHE_FREE = 50 * GIB  # V-JEPA 2 ViT-g and Qwen3-VL weights, with room to update them


def problems(uid: str | None, memory: int, cpus: int, cache_free: int) -> list[str]:
    found = []
    if not uid or uid == "0":
        found.append("AIRFLOW_UID: not set or 0 (root); set it to your user id (id -u) in .env")
    if memory < MIN_MEMORY:
        found.append(f"memory: {memory / GIB:.1f} GiB, at least {MIN_MEMORY // GIB} GiB needed")
    if cpus < MIN_CPUS:
        found.append(f"CPUs: {cpus}, at least {MIN_CPUS} needed")
    if cache_free < MIN_CACHE_FREE:
        found.append(
            f"model cache: {cache_free / GIB:.1f} GiB free, {MIN_CACHE_FREE // GIB} GiB wanted"
        )
    return found


def main() -> int:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cache = os.environ.get("ACTION100M_CACHE", "/opt/airflow/cache")
    while not os.path.exists(cache):
        cache = os.path.dirname(cache) or "/"
    found = problems(os.environ.get("AIRFLOW_UID"), memory, os.cpu_count() or 1,
                     shutil.disk_usage(cache).free)  # fmt: skip
    for problem in found:
        print(f"WARNING: {problem}", file=sys.stderr)
    return 1 if any(p.startswith("AIRFLOW_UID") for p in found) else 0


if __name__ == "__main__":
    sys.exit(main())
