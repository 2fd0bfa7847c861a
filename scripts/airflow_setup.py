"""Prepare an Airflow home for action100m: metadata database, pools, connections. Idempotent.

    python scripts/airflow_setup.py [--pool gpu=1 --pool vlm=4 --pool llm=4] [--skip-migrate]

Run it with the environment of ``scripts/airflow_env.sh`` (or any ``AIRFLOW_HOME`` /
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``). Connections are created or updated from the usual
variables, only where they are set, and their secrets are never printed:

- ``action100m_store`` (aws): ``ACTION100M_STORE`` (root), ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` (MinIO or another S3-compatible server)
- ``openai_default``: ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` (any OpenAI-compatible server),
  ``ACTION100M_LLM_MODEL``
- ``anthropic_default``: ``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``, ``ACTION100M_LLM_MODEL``
- ``vllm_default``: ``VLLM_BASE_URL``, ``VLLM_API_KEY`` (the captioning server)
- ``encoder_default``: ``ENCODER_BASE_URL``, ``ACTION100M_ENCODER_API_KEY`` (the encoder service)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

DEFAULT_POOLS = {  # compose and scripts/airflow_env.sh set the variables
    "gpu": int(os.environ.get("GPU_POOL_SLOTS") or 1),
    "llm": int(os.environ.get("LLM_POOL_SLOTS") or 4),
    "vlm": int(os.environ.get("VLM_POOL_SLOTS") or 4),
    "download": int(os.environ.get("DOWNLOAD_POOL_SLOTS") or 4),
}
POOL_DESCRIPTIONS = {
    "gpu": "action100m embed: one slot per GPU worker",
    "vlm": "action100m caption: tasks at once per vLLM server (x caption.concurrency requests)",
    "llm": "action100m aggregate: concurrent LLM tasks (each keeps 1/slots of the rate limits)",
    "download": "action100m fetch: concurrent downloads from the video sites (yt-dlp)",
}


def wanted_connections(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Connection fields by ID, from whichever variables are set."""
    found: dict[str, dict[str, Any]] = {}
    root = env.get("ACTION100M_STORE", "")
    endpoint = env.get("AWS_ENDPOINT_URL") or env.get("ACTION100M_S3_ENDPOINT_URL")
    if root.startswith(("s3://", "s3a://")) or endpoint:
        extra = {k: v for k, v in (("root", root), ("endpoint_url", endpoint)) if v}
        found["action100m_store"] = {
            "conn_type": "aws",
            "login": env.get("AWS_ACCESS_KEY_ID"),
            "password": env.get("AWS_SECRET_ACCESS_KEY"),
            "extra": extra,
        }
    elif root:
        found["action100m_store"] = {"conn_type": "fs", "extra": {"root": root}}
    model = env.get("ACTION100M_LLM_MODEL")
    for conn_id, key_var, url_var in (
        ("openai_default", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
        ("anthropic_default", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
    ):
        if env.get(key_var) or env.get(url_var):
            extra = {k: v for k, v in (("base_url", env.get(url_var)), ("model", model)) if v}
            found[conn_id] = {
                "conn_type": "generic",
                "password": env.get(key_var),
                "extra": extra,
            }
    if env.get("VLLM_BASE_URL"):
        found["vllm_default"] = {
            "conn_type": "generic",
            "password": env.get("VLLM_API_KEY"),
            "extra": {"base_url": env["VLLM_BASE_URL"]},
        }
    if env.get("ENCODER_BASE_URL"):
        found["encoder_default"] = {
            "conn_type": "generic",
            "password": env.get("ACTION100M_ENCODER_API_KEY"),
            "extra": {"base_url": env["ENCODER_BASE_URL"]},
        }
    return found


def upsert_connections(connections: dict[str, dict[str, Any]]) -> None:
    from airflow.models import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        for conn_id, fields in connections.items():
            existing = session.query(Connection).filter(Connection.conn_id == conn_id).one_or_none()
            conn = existing or Connection(conn_id=conn_id)
            conn.conn_type = fields["conn_type"]
            conn.login = fields.get("login")
            conn.password = fields.get("password")
            conn.extra = json.dumps(fields.get("extra") or {})
            if existing is None:
                session.add(conn)
            secret = "with a secret" if fields.get("password") else "no secret"
            print(f"connection {conn_id}: {fields['conn_type']}, {secret}")


def upsert_pools(pools: dict[str, int]) -> None:
    from airflow.models import Pool

    for name, slots in pools.items():
        description = POOL_DESCRIPTIONS.get(name, "action100m")
        Pool.create_or_update_pool(name, slots, description, include_deferred=False)
        print(f"pool {name}: {slots} slot(s)")


def parse_pools(values: list[str]) -> dict[str, int]:
    pools = dict(DEFAULT_POOLS)
    for value in values:
        name, _, slots = value.partition("=")
        pools[name.strip()] = int(slots)
    return pools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", action="append", default=[], metavar="NAME=SLOTS")
    parser.add_argument("--skip-migrate", action="store_true", help="database already migrated")
    args = parser.parse_args(argv)
    if not args.skip_migrate:
        airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
        subprocess.run([airflow, "db", "migrate"], check=True, stdout=subprocess.DEVNULL)
        print(f"metadata database ready ({os.environ.get('AIRFLOW_HOME', '~/airflow')})")
    upsert_pools(parse_pools(args.pool))
    upsert_connections(wanted_connections(dict(os.environ)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
