"""Airflow connections -> the library's store, settings and service keys, as explicit arguments.

Nothing here writes ``os.environ``: the store gets its credentials as storage options, the model
services' keys travel as a :class:`~action100m.services.Services` (``SecretStr``), endpoints and
models as a settings layer. No secret is ever logged.

- ``action100m_store`` (type ``aws``): login/password = access key/secret, extra ``endpoint_url``
  (MinIO, any S3-compatible server) and ``root`` (e.g. ``s3://action100m``). Without the
  connection, the root comes from ``ACTION100M_STORE`` (else the library default, ``./artifacts``)
  and S3 credentials from the usual AWS variables.
- ``openai_default`` / ``anthropic_default``: password = API key; host or extra ``base_url`` = an
  OpenAI-compatible endpoint; extra ``model``. ``vllm_default``: the captioning vLLM server.
  ``asr_default``: the speech recogniser of the fetch stage (``fetch.asr_backend=api``).
  ``encoder_default``: the encoder service (``embed.backend=service``), URL and key as an
  ``Endpoint`` of the ``Services``.
- ``action100m_fetch``: the fetch stage's proxy (extra ``proxy``, or host/port/login/password)
  and cookies (extra ``cookies``: a Netscape cookies file's text); the cookies may instead be
  the variable ``action100m_fetch_cookies``. Both are masked in task logs.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException

from action100m_airflow import (
    ASR_CONN_ID,
    ENCODER_CONN_ID,
    FETCH_CONN_ID,
    FETCH_COOKIES_VARIABLE,
    LLM_CONN_IDS,
    STORE_CONN_ID,
    VLLM_CONN_ID,
)

log = logging.getLogger(__name__)


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

    def root_and_s3_options(self) -> tuple[str | None, dict[str, Any] | None]:
        """The root URI (None: the library default) and the connection's S3 options (None: no
        ``aws`` connection): the store's own where the root is on S3, and those of every other
        ``s3://`` URI the tasks read (sources, metadata, manifests) wherever the root is."""
        from action100m.store import s3_options

        env_root = os.environ.get("ACTION100M_STORE")
        conn = optional_connection(self.store_conn_id)
        if conn is None:
            return env_root, None
        extra = conn.extra_dejson
        root = extra.get("root") or env_root
        if conn.conn_type != "aws":
            return root, None
        endpoint = extra.get("endpoint_url") or (
            extra.get("service_config", {}).get("s3", {}).get("endpoint_url")
        )
        return root, s3_options(conn.login, conn.password, endpoint, extra.get("region_name"))

    def get_store(self, root: str | None = None) -> Any:
        from action100m.store import ArtifactStore

        conn_root, s3 = self.root_and_s3_options()
        root = root or conn_root
        if root is None:
            from action100m.config import Settings

            root = Settings().store
        return ArtifactStore(root, s3=s3)


def model_services(requested_provider: str | None) -> tuple[dict[str, Any], Any]:
    """``(settings, keys)`` from the LLM and vLLM connections: endpoints and models as a
    settings layer (``{"aggregate": {"base_url": ...}}``), the connections' keys as a
    ``Services`` to lay over the process's own (``Services.overlay``). Nothing is exported;
    keys are never returned as text."""
    from pydantic import SecretStr

    from action100m.services import Endpoint, Services

    settings: dict[str, Any] = {}
    services = Services()
    providers = [requested_provider] if requested_provider else list(LLM_CONN_IDS)
    for provider in providers:
        conn = optional_connection(LLM_CONN_IDS[provider])
        if conn is None:
            continue
        settings["aggregate"] = {"provider": provider, **_endpoint_settings(conn)}
        key = SecretStr(conn.password) if conn.password else None
        services = services.with_llm(provider, Endpoint(api_key=key))
        log.debug(  # every task builds its runtime: said once where it matters (aggregate)
            "LLM from connection %s: provider %s, model %s, endpoint %s, key %s",
            LLM_CONN_IDS[provider], provider, settings["aggregate"].get("model", "(default)"),
            _safe(settings["aggregate"].get("base_url")) or "(provider default)",
            "set" if conn.password else "not set",
        )  # fmt: skip
        break
    vllm = optional_connection(VLLM_CONN_ID)
    if vllm is not None:
        settings["caption"] = _endpoint_settings(vllm)
        if vllm.password:
            services = services.with_vlm(Endpoint(api_key=SecretStr(vllm.password)))
        log.debug("captioning server from connection %s: %s", VLLM_CONN_ID,
                 _safe(settings["caption"].get("base_url")))  # fmt: skip
    asr = optional_connection(ASR_CONN_ID)
    if asr is not None:
        found = _endpoint_settings(asr)
        settings["fetch"] = {
            f"asr_{name}": value for name, value in found.items() if name in ("base_url", "model")
        }
        if asr.password:
            services = services.model_copy(
                update={"asr": Endpoint(api_key=SecretStr(asr.password)).over(services.asr)}
            )
    encoder = optional_connection(ENCODER_CONN_ID)
    if encoder is not None:
        key = SecretStr(encoder.password) if encoder.password else None
        found = Endpoint(base_url=_base_url(encoder), api_key=key)
        services = services.model_copy(update={"encoder": found})
    return settings, services.model_copy(update={"fetch": fetch_access()})


def fetch_access() -> Any:
    """The fetch stage's proxy and cookies from the ``action100m_fetch`` connection (and the
    ``action100m_fetch_cookies`` variable), masked in the task log, never logged here."""
    from pydantic import SecretStr

    from action100m.services import FetchAccess

    proxy = cookies = None
    conn = optional_connection(FETCH_CONN_ID)
    if conn is not None:
        extra = conn.extra_dejson
        proxy = extra.get("proxy") or _proxy_url(conn)
        cookies = extra.get("cookies")
    if not cookies:
        cookies = _variable(FETCH_COOKIES_VARIABLE)
    for secret in (proxy, cookies):
        if secret:
            _mask(secret)
    return FetchAccess(
        proxy=SecretStr(proxy) if proxy else None,
        cookies=SecretStr(cookies) if cookies else None,
    )


def _proxy_url(conn: Connection) -> str | None:
    if not conn.host:
        return None
    parts = urlsplit(conn.host if "://" in conn.host else f"{conn.schema or 'http'}://{conn.host}")
    auth = f"{quote(conn.login or '', safe='')}:{quote(conn.password or '', safe='')}@"
    netloc = (auth if conn.login else "") + (parts.hostname or "")
    port = conn.port or parts.port
    return parts._replace(netloc=netloc + (f":{port}" if port else "")).geturl()


def _variable(key: str) -> str | None:
    from airflow.sdk import Variable

    try:
        value = Variable.get(key, default=None)
    except Exception:  # outside a task (no supervisor to ask), or no variables at all
        return None
    return str(value) if value else None


def _mask(secret: str) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret(secret)


def _endpoint_settings(conn: Connection) -> dict[str, str]:
    found = {}
    if url := _base_url(conn):
        found["base_url"] = url
    if model := conn.extra_dejson.get("model"):
        found["model"] = str(model)
    return found
