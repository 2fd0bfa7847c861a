"""One wrapper per model, each loaded once per process through :func:`load_once` and
``from_pretrained``.

A model name is a hub repo id, a local folder, or ``tiny-random/NAME``: a tiny random-initialised
model built offline from a small config into the local cache and then loaded by the same code as
the real one (the way transformers tests itself).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

from action100m.config import TINY_PREFIX
from action100m.errors import PermanentError

log = logging.getLogger(__name__)
T = TypeVar("T")
# Loading a model is the expensive part (imports, weights, moving to the GPU): every model of a
# process is loaded here once per identity and kept. LOADS counts the loads by kind.
_LOADED: dict[tuple[str, Hashable], Any] = {}
_LOCKS: dict[tuple[str, Hashable], threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()
LOADS: Counter[str] = Counter()


def load_once(kind: str, identity: Hashable, factory: Callable[[], T], name: str = "") -> T:
    """The model ``kind`` with ``identity`` (name, device, dtype, ...), built by ``factory`` the
    first time this process asks for it and the same object every later time.

    Weights that are neither cached nor downloadable (offline, a wrong name) are a
    PermanentError naming the model and what to do: retrying cannot bring them."""
    key = (kind, identity)
    with _LOCKS_LOCK:  # one lock per model: two different models load side by side
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _LOADED:
            started = time.monotonic()
            try:
                _LOADED[key] = factory()
            # transformers/huggingface_hub: OSError (not cached, hub unreachable, no weights
            # file), ValueError (a folder that holds no model at all)
            except (OSError, ValueError) as exc:
                raise _weights_missing(kind, name, exc) from None
            LOADS[kind] += 1
            log.info("%s loaded in %.1f s (kept for this process)", kind,
                     time.monotonic() - started)  # fmt: skip
        value: T = _LOADED[key]
        return value


def _weights_missing(kind: str, name: str, exc: Exception) -> PermanentError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return PermanentError(
        f"{kind} model {name or '?'}: weights are neither cached nor downloadable ({first[:200]}). "
        "Offline, run with --profile tiny (tiny random models); or download the weights where "
        "this machine can (HF_HOME's cache, or a local folder named in the model setting)"
    )


def quiet_transformers() -> None:
    """No download or loading progress bars in task logs (transformers logs them as errors)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def unload_all() -> None:
    """Forget every loaded model (tests; a process that switches models for good)."""
    with _LOCKS_LOCK:
        _LOADED.clear()


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


def converted_dir(name: str, dtype: str) -> Path:
    """Where a model's weights converted to ``dtype`` are kept (``ACTION100M_CACHE``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip("/"))
    return cache_dir() / "converted" / f"{safe}-{dtype}"


def save_converted(model: Any, target: Path) -> None:
    """Save ``model`` (already in its target dtype) to ``target``, written beside it and renamed,
    so the next load reads half the bytes and converts nothing; a failure only costs the cache."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as exc:
        log.warning("no converted copy of the weights in %s: %s", target.parent, exc)
        return
    try:
        model.save_pretrained(scratch)
        with contextlib.suppress(OSError):  # another process may have finished first
            scratch.rename(target)
        log.info("converted weights kept in %s for the next loads", target)
    except (OSError, RuntimeError) as exc:
        log.warning("no converted copy of the weights in %s: %s", target, exc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested
