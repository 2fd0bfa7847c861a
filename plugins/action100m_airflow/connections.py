"""Airflow connections -> the library's store and settings. No secret is ever logged.

- ``action100m_store`` (type ``aws``): login/password = access key/secret, extra ``endpoint_url``
  (MinIO, any S3-compatible server) and ``root`` (e.g. ``s3://action100m``). Without the
  connection, the root comes from ``ACTION100M_STORE`` (else the library default, ``./artifacts``)
  and S3 credentials from the usual AWS variables.
- ``openai_default`` / ``anthropic_default``: password = API key; host or extra ``base_url`` = an
  OpenAI-compatible endpoint; extra ``model``. ``vllm_default``: the captioning vLLM server.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException

from action100m_airflow import LLM_CONN_IDS, STORE_CONN_ID, VLLM_CONN_ID

log = logging.getLogger(__name__)

API_KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def optional_connection(conn_id: str) -> Connection | None:
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def _base_url(conn: Connection) -> str | None:
    extra = conn.extra_dejson
    url = extra.get("base_url") or extra.get("endpoint_url")
    if not url and conn.host:
        url = conn.host if "://" in conn.host else None
        if url and conn.port and not urlsplit(url).port:
            parts = urlsplit(url)
            url = parts._replace(netloc=f"{parts.netloc}:{conn.port}").geturl()
    return url or None


def _safe(url: str | None) -> str | None:
    """A URL fit for a log line: user info (credentials) removed."""
    if not url:
        return url
    parts = urlsplit(url)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=host).geturl()


class ArtifactStoreHook(BaseHook):
    """The pipeline's artifact store, from the ``action100m_store`` connection."""

    conn_name_attr = "store_conn_id"
    default_conn_name = STORE_CONN_ID
    conn_type = "aws"
    hook_name = "Action100M artifact store"

    def __init__(self, store_conn_id: str = STORE_CONN_ID) -> None:
        super().__init__()
        self.store_conn_id = store_conn_id

    def root_and_options(self) -> tuple[str | None, dict[str, Any] | None]:
        """The root URI (None: the library default) and fsspec storage options (None: from env)."""
        env_root = os.environ.get("ACTION100M_STORE")
        conn = optional_connection(self.store_conn_id)
        if conn is None:
            return env_root, None
        extra = conn.extra_dejson
        root = extra.get("root") or env_root
        endpoint = extra.get("endpoint_url") or (
            extra.get("service_config", {}).get("s3", {}).get("endpoint_url")
        )
        if conn.conn_type == "aws":
            self._export_to_environment(conn.login, conn.password, endpoint)
        if not (root or "").startswith(("s3://", "s3a://")):
            return root, None
        options: dict[str, Any] = {
            "config_kwargs": {
                "connect_timeout": 5,
                "read_timeout": 60,
                "retries": {"max_attempts": 3},
            }
        }
        if conn.login:
            options.update(key=conn.login, secret=conn.password)
        client_kwargs: dict[str, Any] = {}
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        if extra.get("region_name"):
            client_kwargs["region_name"] = extra["region_name"]
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        return root, options

    @staticmethod
    def _export_to_environment(key: str | None, secret: str | None, endpoint: str | None) -> None:
        """Make the connection the task process's AWS identity, so every S3 read in the library
        (sources, metadata, manifests) reaches the same server with the same keys."""
        if key:
            os.environ["AWS_ACCESS_KEY_ID"] = key
            os.environ["AWS_SECRET_ACCESS_KEY"] = secret or ""
        if endpoint:
            os.environ["AWS_ENDPOINT_URL"] = endpoint

    def get_store(self, root: str | None = None) -> Any:
        from action100m.store import ArtifactStore

        conn_root, options = self.root_and_options()
        root = root or conn_root
        if root is None:
            from action100m.config import Settings

            root = Settings().store
        return ArtifactStore(root, options)


def model_service_settings(requested_provider: str | None) -> dict[str, str]:
    """Settings (``{"aggregate.base_url": ..., ...}``) from the LLM and vLLM connections; API keys
    are exported to the variables the clients read, never returned or logged."""
    found: dict[str, str] = {}
    providers = [requested_provider] if requested_provider else list(LLM_CONN_IDS)
    for provider in providers:
        conn = optional_connection(LLM_CONN_IDS[provider])
        if conn is None:
            continue
        found["aggregate.provider"] = provider
        found.update(_endpoint_settings("aggregate", conn))
        if conn.password:
            os.environ[API_KEY_VARIABLES[provider]] = conn.password
        log.info(
            "LLM from connection %s: provider %s, model %s, endpoint %s, key %s",
            LLM_CONN_IDS[provider], provider, found.get("aggregate.model", "(default)"),
            _safe(found.get("aggregate.base_url")) or "(provider default)",
            "set" if conn.password else "not set",
        )  # fmt: skip
        break
    vllm = optional_connection(VLLM_CONN_ID)
    if vllm is not None:
        found.update(_endpoint_settings("caption", vllm))
        if vllm.password:
            os.environ["VLLM_API_KEY"] = vllm.password
        log.info("captioning server from connection %s: %s", VLLM_CONN_ID,
                 _safe(found.get("caption.base_url")))  # fmt: skip
    return found


def _endpoint_settings(section: str, conn: Connection) -> dict[str, str]:
    found = {}
    if url := _base_url(conn):
        found[f"{section}.base_url"] = url
    if model := conn.extra_dejson.get("model"):
        found[f"{section}.model"] = str(model)
    return found
