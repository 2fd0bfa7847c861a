"""One wrapper per model, each loaded once per task through ``from_pretrained``.

A model name is a hub repo id, a local folder, or ``tiny-random/NAME``: a tiny random-initialised
model built offline from a small config into the local cache and then loaded by the same code as
the real one (the way transformers tests itself).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from action100m.config import TINY_PREFIX


def cache_dir() -> Path:
    return Path(os.environ.get("ACTION100M_CACHE", "~/.cache/action100m")).expanduser()


def resolve_model(name: str, builders: dict[str, Callable[[Path], None]]) -> str:
    """The repo id or folder to hand to ``from_pretrained``; builds a tiny model on first use."""
    if not name.startswith(TINY_PREFIX):
        return name
    tiny = name[len(TINY_PREFIX) :]
    if tiny not in builders:
        raise ValueError(f"no tiny model named {tiny!r}; known: {sorted(builders)}")
    target = cache_dir() / "tiny" / tiny
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename, so parallel tasks never load a half-written folder.
        scratch = Path(tempfile.mkdtemp(prefix=f".{tiny}-", dir=target.parent))
        try:
            builders[tiny](scratch)
            # Another process may have finished first; its copy is as good as ours.
            with contextlib.suppress(OSError):
                scratch.rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return str(target)


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested
