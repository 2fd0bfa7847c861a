"""A lease per video stage, so two runs of one video never pay a paid service twice at once.

The stage runner takes it before a stage that calls a paid or shared service (``caption``
against a server, ``aggregate`` against an LLM) and gives it back when the stage ends. It is a
small record, ``_LEASE``, in the stage's output folder (so it is per video, per stage and per
settings: other settings write elsewhere and may run), with its holder and an expiry. A second
run finding a live lease waits for it to end, then reuses the holder's output; after
``wait_seconds`` it gives up with one line naming the holder, and Airflow retries it later. A
holder that died leaves a lease that expires after ``ttl_seconds`` (the stage's timeout).

Taking it is atomic on a local store (a hard link, which fails where a lease exists). S3 through s3fs has no conditional write, so
there the record is written, then read back after a pause: of two runs racing, only the one whose
record is read back proceeds, which closes all but a window of ``settle_seconds``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from action100m.errors import Action100MError
from action100m.store import ArtifactStore

log = logging.getLogger(__name__)

LEASE_NAME = "_LEASE"


class LeaseHeld(Action100MError):
    """Another run holds the stage's lease (retryable: it ends, or it expires)."""


@dataclass(frozen=True)
class Lease:
    uri: str
    token: str


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _read(store: ArtifactStore, uri: str) -> dict[str, Any] | None:
    try:
        record = json.loads(store.read_bytes(uri))
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _create(store: ArtifactStore, uri: str, record: dict[str, Any], settle: float) -> bool:
    data = json.dumps(record).encode()
    if store.is_local:
        # Written whole under a temporary name, then linked into place: the link fails if a
        # lease exists, and a reader never sees a lease without its record (an empty file
        # would read as expired and be broken).
        path = Path(store.fs._strip_protocol(uri))
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{record['token']}")
        try:
            scratch.write_bytes(data)
            os.link(scratch, path)
        except FileExistsError:
            return False
        finally:
            scratch.unlink(missing_ok=True)
        return True
    if store.exists(uri):
        return False
    store.write_bytes(uri, data)
    time.sleep(settle)  # a racing writer's record replaces ours within this pause
    held = _read(store, uri)
    return bool(held and held.get("token") == record["token"])


def _remove(store: ArtifactStore, uri: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        store.fs.rm(uri)


def take(
    store: ArtifactStore,
    folder: str,
    what: str,
    *,
    ttl_seconds: float,
    wait_seconds: float,
    finished: Callable[[], bool],
    poll_seconds: float = 2.0,
    settle_seconds: float = 0.25,
    holder: str | None = None,
) -> Lease | None:
    """The lease on ``folder`` (None: another run finished the stage meanwhile: reuse it).
    ``what`` names the video and stage in messages."""
    uri = f"{folder.rstrip('/')}/{LEASE_NAME}"
    holder = holder or f"{socket.gethostname()} pid {os.getpid()}"
    deadline, told = time.monotonic() + wait_seconds, False
    while True:
        token = uuid.uuid4().hex
        now = time.time()
        record = {"token": token, "holder": holder, "taken": now, "expires": now + ttl_seconds}
        if _create(store, uri, record, settle_seconds):
            return Lease(uri, token)
        held = _read(store, uri)
        if held is None or float(held.get("expires", 0)) <= time.time():
            log.warning("%s: breaking an expired lease (%s)", what, (held or {}).get("holder"))
            _remove(store, uri)
            continue
        if finished():
            return None
        since, until = _stamp(float(held.get("taken", 0))), _stamp(float(held["expires"]))
        who = f"{held.get('holder')} since {since}, lease until {until}"
        if time.monotonic() >= deadline:
            raise LeaseHeld(f"{what} is being run by {who}; not starting it twice (retry later)")
        if not told:
            log.info("%s: waiting for the run holding it (%s)", what, who)
            told = True
        time.sleep(poll_seconds)


def give_back(store: ArtifactStore, lease: Lease | None) -> None:
    """Remove the lease if it is still ours (an expired one may have been taken since)."""
    if lease is None:
        return
    held = _read(store, lease.uri)
    if held and held.get("token") == lease.token:
        _remove(store, lease.uri)
