"""The production topology, checked without a Docker engine: compose file, Dockerfile, .env.example."""

from __future__ import annotations

import importlib.util
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
ONE_SHOT = {"airflow-init", "minio-init", "airflow-cli"}  # airflow-cli: a command, then gone
# Secrets without a default: compose refuses to start until .env sets them.
SECRETS = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY")


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
    assert "--pool gpu=" in init and "--pool llm=" in init and "--pool vlm=" in init
    assert "--pool download=" in init
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
    # A plain `docker build .` builds the last stage: it must be the small CPU image.
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", dockerfile, re.M)
    assert stages[-1][0] == "cpu", stages
    # Every pip install names the pinned Airflow, so that no package it installs can move it; each
    # stage that installs declares the version (an ARG before FROM is not seen inside a stage).
    for stage in re.split(r"^FROM ", dockerfile, flags=re.M)[1:]:
        steps = re.findall(r"pip install ((?:[^\n]*\\\n)*[^\n]*)", stage)
        for step in steps:
            assert '"apache-airflow==${AIRFLOW_VERSION}"' in step, step
        assert not steps or re.search(r"^ARG AIRFLOW_VERSION$", stage, re.M), stage[:40]
    assert dockerfile.count("pip install") >= 2


def test_images_have_the_fab_auth_manager_and_compose_can_select_it(
    compose: dict[str, Any],
) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG FAB_PROVIDER_VERSION=\d+\.\d+\.\d+$", dockerfile, re.M)
    cpu_stage = dockerfile.split(" AS gpu", 1)[0]  # the GPU image is built on the CPU one
    (step,) = [s for s in re.findall(r"pip install ((?:[^\n]*\\\n)*[^\n]*)", cpu_stage)]
    assert '"apache-airflow-providers-fab==${FAB_PROVIDER_VERSION}"' in step
    assert "import action100m, torch, transformers, airflow.providers.fab" in cpu_stage
    # The demo's simple auth manager by default; FAB when .env names it.
    manager = compose["x-airflow-common"]["environment"]["AIRFLOW__CORE__AUTH_MANAGER"]
    name, _, default = manager.removeprefix("${").removesuffix("}").partition(":-")
    assert name == "AIRFLOW__CORE__AUTH_MANAGER" and default.endswith(".SimpleAuthManager")
    fab = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
    assert f"# AIRFLOW__CORE__AUTH_MANAGER={fab}" in (ROOT / ".env.example").read_text()
    # airflow-init makes the admin either way: a FAB user, or the simple auth manager's file.
    init = _command(compose["services"]["airflow-init"])
    fab_branch, _, simple_branch = init.partition("airflow users create")[2].partition("else")
    assert "--role Admin" in fab_branch and "_AIRFLOW_WWW_USER_PASSWORD" in fab_branch
    assert "simple_auth_manager_passwords.json" in simple_branch
    assert init.index("airflow db migrate") < init.index("airflow users create")


def test_flower_cli_init_checks_and_the_metadata_connection(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert (
        services["flower"]["command"] == "celery flower"
        and "flower" in services["flower"]["profiles"]
    )
    assert services["airflow-cli"]["profiles"] == ["debug"]
    init = " ".join(services["airflow-init"]["command"])
    assert init.index("compose_checks.py") < init.index("airflow db migrate")
    assert "airflow config list" in init
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW_CONN_ACTION100M_METADATA_DB"].startswith("postgres://")


def test_init_checks_warn_of_root_little_memory_and_a_small_model_disk() -> None:
    spec = importlib.util.spec_from_file_location(
        "compose_checks", ROOT / "scripts" / "compose_checks.py"
    )
    assert spec and spec.loader
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    gib = 1 << 30
    fine = checks.problems(uid="50000", memory=16 * gib, cpus=8, cache_free=500 * gib)
    assert fine == []
    low = checks.problems(uid="0", memory=2 * gib, cpus=1, cache_free=5 * gib)
    assert [p.split(":")[0] for p in low] == ["AIRFLOW_UID", "memory", "CPUs", "model cache"]


def test_helm_values_run_gpu_stages_in_pods_with_the_claim_the_pvc_makes() -> None:
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
    pvc = yaml.safe_load((ROOT / "deploy" / "helm" / "model-cache-pvc.yaml").read_text())
    assert "KubernetesExecutor" in values["executor"] and "CeleryExecutor" in values["executor"]
    env = {item["name"]: item["value"] for item in values["env"]}
    assert env["ACTION100M_K8S_MODEL_CACHE_CLAIM"] == pvc["metadata"]["name"]
    assert values["triggerer"]["replicas"] >= 1  # the backfill's deferred waits
    assert "FabAuthManager" in values["config"]["core"]["auth_manager"]
    assert "--queues default" in " ".join(values["workers"]["celery"]["args"])
    secrets = {item["envName"] for item in values["secret"]}
    assert "AIRFLOW_CONN_ACTION100M_METADATA_DB" in secrets


def environment_keys_read_by_code() -> set[str]:
    # Names of the pipeline's own variables, wherever they are quoted (lookups and tables).
    pattern = re.compile(r"""["']((?:ACTION100M|AWS|OPENAI|ANTHROPIC|VLLM)_[A-Z0-9_]+)["']""")
    keys: set[str] = set()
    for folder in ("action100m", "dags", "plugins", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            keys |= set(pattern.findall(path.read_text()))
    return keys


def env_example() -> dict[str, str]:
    """The settings ``.env.example`` sets (uncommented): what reaches every Airflow container."""
    text = (ROOT / ".env.example").read_text()
    return dict(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", text, re.M))


def test_every_environment_key_the_code_reads_is_in_env_example() -> None:
    example = (ROOT / ".env.example").read_text()
    # Set, or shown commented out (optional settings: an empty value is not an unset one).
    documented = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]+)=", example, re.M))
    internal = {"AIRFLOW_HOME", "HOME", "PATH", "PYTHONPATH", "HOSTNAME"}
    keys = environment_keys_read_by_code() - internal
    assert {"ACTION100M_STORE", "OPENAI_API_KEY", "AWS_ENDPOINT_URL"} <= keys | documented
    missing = sorted(k for k in keys if k not in documented and not k.startswith("AIRFLOW__"))
    assert missing == [], f"add to .env.example: {missing}"


def test_no_empty_value_reaches_the_containers(compose: dict[str, Any]) -> None:
    # An empty OPENAI_BASE_URL / ANTHROPIC_BASE_URL is read by the clients as the base URL "", so
    # every aggregate call fails: optional settings stay commented out, never empty.
    required = set(SECRETS)  # `:?` in compose
    empty = sorted(key for key, value in env_example().items() if not value.strip())
    assert empty == sorted(required), empty
    commented = (ROOT / ".env.example").read_text()
    for key in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        assert key not in env_example() and re.search(rf"^# {key}=\S", commented, re.M), key
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if key.endswith(("_URL", "_BASE_URL")):
                text = str(value)
                assert text and not re.fullmatch(r"\$\{\w+:?-\}", text), (name, key, value)


def test_secrets_have_no_committed_default(compose: dict[str, Any]) -> None:
    common = compose["x-airflow-common"]["environment"]
    for key in SECRETS:
        assert re.fullmatch(rf"\$\{{{key}:\?[^}}]+\}}", common[key]), (key, common[key])
    example = (ROOT / ".env.example").read_text()
    assert "Fernet.generate_key()" in example and "openssl rand" in example
    assert "change-me" not in (ROOT / "docker-compose.yaml").read_text()


def test_model_cache_and_logs_are_the_airflow_users(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cpu_stage = dockerfile.split(" AS gpu", 1)[0]
    assert re.search(r"mkdir -p /opt/airflow/cache\b", cpu_stage)
    assert re.search(r"chown -R airflow:0 /opt/airflow/cache\b", cpu_stage)
    common = compose["x-airflow-common"]
    assert "model-cache:/opt/airflow/cache" in common["volumes"]
    assert "/opt/airflow/cache/huggingface" in cpu_stage  # HF_HOME lives in the volume
    init = _command(compose["services"]["airflow-init"])
    chown = re.search(r'chown -R "\$\{AIRFLOW_UID:-50000\}:0"([^&]+)', init)
    assert chown, init
    for folder in ("/opt/airflow/logs", "/opt/airflow/cache", "/opt/airflow/config"):
        assert folder in chown.group(1), folder
    assert init.index("chown") < init.index("airflow db migrate")


def test_gpu_image_has_cuda_torch_and_a_pinned_vllm() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    gpu_stage = dockerfile.split(" AS gpu", 1)[1]
    assert re.search(r"^ARG VLLM_VERSION=\d+\.\d+\.\d+$", dockerfile, re.M)
    assert '"vllm==${VLLM_VERSION}"' in gpu_stage and "--upgrade" not in gpu_stage
    # The CPU torch goes before vLLM brings its CUDA build, and the build checks it did.
    assert gpu_stage.index("pip uninstall -y torch") < gpu_stage.index("pip install")
    assert "assert torch.version.cuda" in gpu_stage


def test_each_gpu_worker_and_vllm_get_a_gpu_of_their_own(compose: dict[str, Any]) -> None:
    services = compose["services"]
    gpu_services = [name for name, s in services.items() if "deploy" in s]
    assert {"airflow-worker-gpu", "vllm"} <= set(gpu_services)
    devices = {}
    for name in gpu_services:
        (request,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert "count" not in request, name  # count: 1 gives every --scale replica GPU 0
        (devices[name],) = request["device_ids"]
    workers = [devices[n] for n in gpu_services if n.startswith("airflow-worker-gpu")]
    assert len(set(workers)) == len(workers) > 1, devices  # one GPU per worker service
    assert "--gpu-memory-utilization" in _command(services["vllm"])
    example = env_example()
    for key in ("AIRFLOW_WORKER_GPU_DEVICE", "VLLM_GPU_DEVICE", "VLLM_GPU_MEMORY_UTILIZATION"):
        assert key in example, key


def test_init_connections_from_the_compose_settings(compose: dict[str, Any]) -> None:
    """What airflow-init creates from .env: the store on MinIO, vLLM, and the LLM whose key is set
    (an empty base URL variable adds no endpoint)."""
    spec = importlib.util.spec_from_file_location(
        "airflow_setup", ROOT / "scripts" / "airflow_setup.py"
    )
    assert spec and spec.loader
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    env = {**env_example(), "OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": ""}
    for key, raw in compose["x-airflow-common"]["environment"].items():
        if key.startswith(("ACTION100M_", "AWS_")):  # ${VAR:-default}: .env's value wins
            name, _, default = str(raw).removeprefix("${").removesuffix("}").partition(":-")
            env.setdefault(name, default)
    found = setup.wanted_connections(env)
    assert set(found) == {"action100m_store", "openai_default", "vllm_default"}
    store = found["action100m_store"]
    assert store["conn_type"] == "aws" and store["login"] == env["AWS_ACCESS_KEY_ID"]
    assert store["extra"] == {"root": "s3://action100m", "endpoint_url": "http://minio:9000"}
    assert found["openai_default"]["password"] == "sk-x"
    assert "base_url" not in found["openai_default"]["extra"]
    assert found["vllm_default"]["extra"] == {"base_url": "http://vllm:8000/v1"}


def test_caption_tasks_ask_for_the_model_the_vllm_service_serves(compose: dict[str, Any]) -> None:
    served = compose["services"]["vllm"]["command"]
    model = served[served.index("--model") + 1]
    assert served[served.index("--served-model-name") + 1] == model
    assert model == "${CAPTION_MODEL:-cpatonn/Qwen3-VL-4B-Instruct-AWQ-4bit}"
    settings = env_example()
    assert settings["ACTION100M_CAPTION__MODEL"] == settings["CAPTION_MODEL"]
    assert model.removesuffix("}").endswith(settings["CAPTION_MODEL"])
