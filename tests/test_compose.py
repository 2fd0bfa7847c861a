"""The production topology, checked without a Docker engine: compose file, Dockerfile, .env.example."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_ROLES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker --queues default",
    "airflow-worker-gpu": "celery worker --queues gpu",
}
ONE_SHOT = {"airflow-init", "minio-init"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yaml").read_text()))


def _command(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def test_every_service_the_readme_names_exists(compose: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`((?:airflow-[a-z-]+)|postgres|redis|minio|vllm)`", readme))
    named -= set(compose["volumes"])  # the README also names volumes such as `airflow-logs`
    assert named, "the README names the compose services"
    assert named <= set(compose["services"]), named - set(compose["services"])
    assert {"postgres", "redis", "minio", "minio-init", "airflow-init", "vllm"} <= set(
        compose["services"]
    )


def test_airflow_services_share_image_and_environment(compose: dict[str, Any]) -> None:
    services = compose["services"]
    common = services["airflow-scheduler"]["environment"]
    assert common["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert common["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    for name, role in AIRFLOW_ROLES.items():
        service = services[name]
        assert _command(service).startswith(role), (name, _command(service))
        for key, value in common.items():
            assert service["environment"].get(key) == value, (name, key)
        if name != "airflow-worker-gpu":
            assert service["image"] == services["airflow-scheduler"]["image"]
        assert "healthcheck" in service, name
        assert service["depends_on"]["airflow-init"]["condition"] == (
            "service_completed_successfully"
        )
    gpu = services["airflow-worker-gpu"]
    assert "--queues gpu" in _command(gpu) and gpu["build"]["target"] == "gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_init_creates_pools_connections_and_bucket(compose: dict[str, Any]) -> None:
    services = compose["services"]
    init = _command(services["airflow-init"])
    assert "airflow db migrate" in init and "scripts/airflow_setup.py" in init
    assert "--pool gpu=" in init and "--pool llm=" in init
    assert "mc mb" in services["minio-init"]["entrypoint"]
    setup = (ROOT / "scripts" / "airflow_setup.py").read_text()
    for conn_id in ("action100m_store", "openai_default", "anthropic_default", "vllm_default"):
        assert conn_id in setup


def test_health_checks_and_named_volumes(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name not in ONE_SHOT:
            assert "healthcheck" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in compose["volumes"], (name, volume)  # named, survives `down`
    assert compose["services"]["vllm"]["profiles"] == ["vllm"]
    assert "model-cache" in compose["volumes"]


def test_dockerfile_pins_airflow_and_stays_non_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    requirements = (ROOT / "requirements.txt").read_text()
    pinned = re.search(r"apache-airflow==([\d.]+)", requirements)
    assert pinned and f"AIRFLOW_VERSION={pinned.group(1)}" in dockerfile
    assert "FROM apache/airflow:${AIRFLOW_VERSION}" in dockerfile
    assert re.search(r"^FROM .* AS gpu$", dockerfile, re.M) and "vllm" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] == "airflow"


def environment_keys_read_by_code() -> set[str]:
    # Names of the pipeline's own variables, wherever they are quoted (lookups and tables).
    pattern = re.compile(r"""["']((?:ACTION100M|AWS|OPENAI|ANTHROPIC|VLLM)_[A-Z0-9_]+)["']""")
    keys: set[str] = set()
    for folder in ("action100m", "dags", "plugins", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            keys |= set(pattern.findall(path.read_text()))
    return keys


def test_every_environment_key_the_code_reads_is_in_env_example() -> None:
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", example, re.M))
    internal = {"AIRFLOW_HOME", "HOME", "PATH", "PYTHONPATH", "HOSTNAME"}
    keys = environment_keys_read_by_code() - internal
    assert {"ACTION100M_STORE", "OPENAI_API_KEY", "AWS_ENDPOINT_URL"} <= keys | documented
    missing = sorted(k for k in keys if k not in documented and not k.startswith("AIRFLOW__"))
    assert missing == [], f"add to .env.example: {missing}"
