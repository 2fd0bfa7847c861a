"""Artifact store over fsspec URIs: ``file://`` (local folder) or ``s3://`` (MinIO, any S3 server).

Where things lie is :mod:`action100m.layout`'s business (the store inherits its methods). Writes never leave a
half-written file under its final name: local files are written to a temporary name and renamed; an
S3 PUT is atomic per object. A stage folder counts as finished only once its ``_SUCCESS`` exists.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec
import numpy as np

from action100m.errors import StoreError, VideoError
from action100m.layout import SUCCESS, StoreLayout

__all__ = ["SUCCESS", "ArtifactStore", "normalise_uri", "s3_options", "s3_options_from_env"]
S3_PROTOCOLS = ("s3", "s3a")


def normalise_uri(uri: str) -> str:
    """A plain path becomes an absolute ``file://`` URI; URIs keep their scheme."""
    if "://" in uri:
        return uri.rstrip("/")
    return Path(uri).expanduser().resolve().as_uri()


def s3_options(
    key: str | None = None,
    secret: str | None = None,
    endpoint: str | None = None,
    region: str | None = None,
) -> dict[str, Any]:
    """Storage options for s3fs, with short timeouts so a dead server fails in seconds instead of
    minutes of silent retries. Without a key, s3fs finds credentials the usual AWS way."""
    options: dict[str, Any] = {
        "config_kwargs": {
            "connect_timeout": 5,
            "read_timeout": 60,
            "retries": {"max_attempts": 3},
        }
    }
    if key:
        options.update(key=key, secret=secret or "")
    client_kwargs = {
        name: value
        for name, value in (("endpoint_url", endpoint), ("region_name", region))
        if value
    }
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options


def s3_options_from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """:func:`s3_options` with the endpoint of the usual variables (keys: boto's own lookup)."""
    env = os.environ if environ is None else environ
    return s3_options(endpoint=env.get("ACTION100M_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL"))


class ArtifactStore(StoreLayout):
    """Reads and writes the pipeline's artifacts under one root URI (paths: :class:`StoreLayout`)."""

    def __init__(
        self,
        root: str,
        storage_options: dict[str, Any] | None = None,
        *,
        s3: dict[str, Any] | None = None,
    ) -> None:
        """``storage_options``: for the root's filesystem (None: the defaults for its kind);
        ``s3``: for any other ``s3://`` URI the store reads (sources, metadata, manifests),
        by default the root's own where the root is on S3, else the usual AWS variables."""
        self.root = normalise_uri(root)
        protocol = self.root.split("://", 1)[0]
        on_s3 = protocol in S3_PROTOCOLS
        if storage_options is None:
            storage_options = (s3 or s3_options_from_env()) if on_s3 else {}
        self.storage_options = storage_options
        self.s3_options = s3 if s3 is not None else (storage_options if on_s3 else None)
        self.fs, _ = fsspec.core.url_to_fs(self.root, **storage_options)
        self.is_local = protocol == "file"

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    # -- low-level I/O ------------------------------------------------------------------------
    def _call(self, what: str, uri: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except Exception as exc:  # botocore/aiohttp/OS errors: one clear message naming the URI
            raise StoreError(f"object store: cannot {what} {uri}: {exc}") from exc

    def exists(self, uri: str) -> bool:
        return bool(self._call("check", uri, self.fs.exists, uri))

    def read_bytes(self, uri: str) -> bytes:
        data: bytes = self._call("read", uri, self.fs.cat_file, uri)
        return data

    def write_bytes(self, uri: str, data: bytes) -> None:
        if not self.is_local:
            self._call("write", uri, self.fs.pipe_file, uri, data)
            return
        with self._local_replace(uri) as tmp:
            tmp.write_bytes(data)

    def put_file(self, local_path: str | os.PathLike[str], uri: str) -> None:
        """Copy a local file to ``uri`` the way :meth:`write_bytes` writes: under a temporary
        name then renamed (local), or one upload that appears whole or not at all (S3), without
        holding it in memory (a downloaded video)."""
        if not self.is_local:
            self._call("upload", uri, self.fs.put_file, os.fspath(local_path), uri)
            return
        with self._local_replace(uri) as tmp:
            shutil.copyfile(local_path, tmp)

    @contextlib.contextmanager
    def _local_replace(self, uri: str) -> Iterator[Path]:
        """A temporary path beside ``uri`` to fill; renamed onto ``uri`` when the block ends
        (never half-written). A full disk, a read-only or misplaced store: one line."""
        path = Path(self.fs._strip_protocol(uri))
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(
                f"store {self.root}: cannot write {uri}: {exc.strerror or exc}"
            ) from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def write_json(self, uri: str, value: Any) -> None:
        self.write_bytes(uri, json.dumps(value, indent=1, ensure_ascii=False).encode())

    def read_npy(self, uri: str) -> np.ndarray:
        return np.load(io.BytesIO(self.read_bytes(uri)), allow_pickle=False)

    def write_npy(self, uri: str, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        self.write_bytes(uri, buffer.getvalue())

    def list(self, uri: str) -> list[str]:
        if not self.exists(uri):
            return []
        found = self._call("list", uri, self.fs.ls, uri, False)
        protocol = self.root.split("://", 1)[0]
        return [f if "://" in f else f"{protocol}://{f}" for f in found]

    # -- completion markers -------------------------------------------------------------------
    def is_done(self, folder: str) -> bool:
        return self.exists(self.success_uri(folder))

    def mark_done(self, folder: str, info: dict[str, Any] | None = None) -> None:
        """Written last: everything in ``folder`` is complete once this exists."""
        self.write_json(self.success_uri(folder), {"finished_at": time.time(), **(info or {})})

    def done_info(self, folder: str) -> dict[str, Any]:
        info: dict[str, Any] = self.read_json(self.success_uri(folder))
        return info

    # -- inputs -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def local_copy(self, uri: str, video_id: str | None = None) -> Iterator[str]:
        """A local path for ``uri``: the file itself when local, else a temporary download.

        With ``video_id``, a remote file that does not exist is that video's VideoError (a retry
        cannot fix it); any other failure to fetch it is a StoreError naming the URI."""
        uri = normalise_uri(uri)
        fs, path = fsspec.core.url_to_fs(uri, **self.options_for(uri))
        if uri.startswith("file://"):
            yield path
            return
        suffix = Path(path).suffix
        with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
            try:
                self._call("download", uri, self._download, fs, path, tmp)
            except FileNotFoundError as exc:
                if video_id is None:
                    raise
                raise VideoError(video_id, f"file not found: {uri}") from exc
            yield tmp.name

    def fingerprint(self, uri: str) -> dict[str, Any] | None:
        """Size and version (ETag, else modification time) of the file at ``uri``, to notice a
        source replaced between stages; None where the file cannot be looked at."""
        uri = normalise_uri(uri)
        try:
            fs, path = fsspec.core.url_to_fs(uri, **self.options_for(uri))
            info = fs.info(path)
        except Exception:  # gone, or no way to ask: the stage reading it will say so
            return None
        version = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
        return {"size": info.get("size"), "version": str(version)}

    @staticmethod
    def _download(fs: Any, path: str, target: IO[bytes]) -> None:
        with fs.open(path, "rb") as src:
            shutil.copyfileobj(src, target)
        target.flush()

    def options_for(self, uri: str) -> dict[str, Any]:
        """Storage options for ``uri``: this store's own on the same kind of storage; for S3, the
        store's S3 credentials (see ``__init__``); else the defaults for that kind of URI."""
        protocol = uri.split("://", 1)[0]
        if protocol == self.root.split("://", 1)[0]:
            return self.storage_options
        if protocol in S3_PROTOCOLS:
            return self.s3_options if self.s3_options is not None else s3_options_from_env()
        return {}
