"""Keys of the model services, passed as an explicit argument, never through ``os.environ``.

Settings say *which* endpoint and model (``aggregate.base_url``, ``caption.base_url``); a
:class:`Services` holds the secrets that go with them, as :class:`~pydantic.SecretStr` so that a
log line, an error message or a ``repr`` never shows one. Outside Airflow they come from the
providers' usual variables (:meth:`Services.from_environment`); under Airflow the plugin builds
them from the connections. Nothing here writes the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from action100m.errors import ConfigError

Provider = Literal["openai", "anthropic"]
KEY_ENV: dict[str, str] = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
BASE_URL_ENV: dict[str, str] = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}
VLM_KEY_ENV = "VLLM_API_KEY"
# Outside Airflow: a proxy URL (credentials may be in it) and a Netscape cookies file for fetch.
FETCH_PROXY_ENV = "ACTION100M_FETCH_PROXY"
FETCH_COOKIES_ENV = "ACTION100M_FETCH_COOKIES"
# The encoder service's key (optional): the service checks it, the embed stage's client sends it.
ENCODER_KEY_ENV = "ACTION100M_ENCODER_API_KEY"


class Endpoint(BaseModel):
    """One service's address and key; either may be missing."""

    model_config = ConfigDict(frozen=True)

    base_url: str | None = None
    api_key: SecretStr | None = None

    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None

    def over(self, base: Endpoint) -> Endpoint:
        """This endpoint's given parts, the rest from ``base``."""
        return Endpoint(
            base_url=self.base_url or base.base_url, api_key=self.api_key or base.api_key
        )


class FetchAccess(BaseModel):
    """What the fetch stage hands yt-dlp that must never be shown: a proxy URL and the text of
    a Netscape cookies file."""

    model_config = ConfigDict(frozen=True)

    proxy: SecretStr | None = None
    cookies: SecretStr | None = None

    def over(self, base: FetchAccess) -> FetchAccess:
        return FetchAccess(proxy=self.proxy or base.proxy, cookies=self.cookies or base.cookies)


class Services(BaseModel):
    """Where the LLM (per provider), the captioning server, the speech recogniser and the encoder
    service are, with their keys; the fetch stage's proxy and cookies."""

    model_config = ConfigDict(frozen=True)

    llm: dict[str, Endpoint] = {}
    vlm: Endpoint = Endpoint()
    asr: Endpoint = Endpoint()
    encoder: Endpoint = Endpoint()  # its address, where given, replaces embed.service_url
    fetch: FetchAccess = FetchAccess()

    def llm_endpoint(self, provider: str) -> Endpoint:
        return self.llm.get(provider) or Endpoint()

    def with_llm(self, provider: str, endpoint: Endpoint) -> Services:
        """A copy where ``endpoint``'s given parts replace this one's for ``provider``."""
        merged = endpoint.over(self.llm_endpoint(provider))
        return self.model_copy(update={"llm": {**self.llm, provider: merged}})

    def with_vlm(self, endpoint: Endpoint) -> Services:
        """A copy where ``endpoint``'s given parts replace the captioning server's."""
        return self.model_copy(update={"vlm": endpoint.over(self.vlm)})

    def overlay(self, other: Services) -> Services:
        """A copy where ``other``'s given endpoints and keys replace this one's."""
        merged = self.with_vlm(other.vlm).model_copy(
            update={
                "asr": other.asr.over(self.asr),
                "encoder": other.encoder.over(self.encoder),
                "fetch": other.fetch.over(self.fetch),
            }
        )
        for provider, endpoint in other.llm.items():
            merged = merged.with_llm(provider, endpoint)
        return merged

    @classmethod
    def from_environment(
        cls,
        environ: dict[str, str] | None = None,
        vlm_key_env: str = VLM_KEY_ENV,
        asr_key_env: str = KEY_ENV["openai"],
    ) -> Services:
        """The providers' usual variables; an empty variable counts as unset (compose passes
        ``OPENAI_BASE_URL=`` when none is configured). The fetch stage's cookies: the file
        ``ACTION100M_FETCH_COOKIES`` names, read when a download starts."""
        env = os.environ if environ is None else environ

        def value(name: str) -> str | None:
            return (env.get(name) or "").strip() or None

        def secret(name: str) -> SecretStr | None:
            found = value(name)
            return SecretStr(found) if found else None

        llm = {
            provider: Endpoint(base_url=value(BASE_URL_ENV[provider]), api_key=secret(key))
            for provider, key in KEY_ENV.items()
        }
        cookies = value(FETCH_COOKIES_ENV)
        fetch = FetchAccess(
            proxy=secret(FETCH_PROXY_ENV),
            cookies=SecretStr(_read_cookies(cookies)) if cookies else None,
        )
        return cls(
            llm=llm, vlm=Endpoint(api_key=secret(vlm_key_env)),
            asr=Endpoint(api_key=secret(asr_key_env)),
            encoder=Endpoint(api_key=secret(ENCODER_KEY_ENV)), fetch=fetch,
        )  # fmt: skip


def _read_cookies(path: str) -> str:
    try:
        return Path(path).expanduser().read_text()
    except OSError as exc:
        raise ConfigError(
            f"{FETCH_COOKIES_ENV}: cannot read {path}: {exc.strerror or exc}"
        ) from None
