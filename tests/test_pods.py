"""The pod a GPU stage's task gets under the KubernetesExecutor, rendered by the cncf.kubernetes
provider's own ``PodGenerator.construct_pod`` from its example pod template (no cluster): the GPU
request, the model cache, the GPU nodes; CPU stages and other executors are left as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from airflow_testenv import REPO, use_test_airflow_home

use_test_airflow_home()

K8S = {"AIRFLOW__CORE__EXECUTOR": "KubernetesExecutor", "ACTION100M_CACHE": "/models",
       "ACTION100M_K8S_GPU_NODE_SELECTOR": '{"gpu": "h100"}'}  # fmt: skip


@pytest.fixture(autouse=True)
def plugins_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "plugins"))


def _render(override: Any) -> Any:
    import airflow.providers.cncf.kubernetes as provider
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    template = Path(provider.__file__).parent / "pod_template_file_examples"
    base = PodGenerator.deserialize_model_file(str(template / "dags_in_image_template.yaml"))
    return PodGenerator.construct_pod(
        dag_id="action100m", task_id="video.embed", pod_id="embed-pod", try_number=1,
        kube_image="action100m-gpu:latest", date=None, args=["airflow", "tasks", "run"],
        pod_override_object=override, base_worker_pod=base, namespace="airflow",
        scheduler_job_id="1", run_id="manual__1", map_index=3,
    )  # fmt: skip


def test_a_gpu_stage_pod_asks_for_a_gpu_and_mounts_the_model_cache() -> None:
    from action100m_airflow.pods import executor_options

    options = executor_options("gpu", K8S)
    assert "executor" not in options  # Kubernetes is the only executor
    pod = _render(options["executor_config"]["pod_override"])
    [base] = [c for c in pod.spec.containers if c.name == "base"]
    assert base.image == "action100m-gpu:latest" and base.args == ["airflow", "tasks", "run"]
    assert base.resources.limits == {"nvidia.com/gpu": "1"}
    assert {(m.name, m.mount_path) for m in base.volume_mounts} >= {("model-cache", "/models")}
    assert any(m.mount_path.endswith("airflow.cfg") for m in base.volume_mounts)  # template's
    claims = {v.name: v.persistent_volume_claim for v in pod.spec.volumes}
    assert claims["model-cache"].claim_name == "action100m-model-cache"
    assert pod.spec.node_selector == {"gpu": "h100"}
    assert [t.key for t in pod.spec.tolerations] == ["nvidia.com/gpu"]
    assert pod.metadata.labels["dag_id"] == "action100m" and pod.metadata.labels["map_index"] == "3"
    plain = _render(None)  # what a CPU stage's task gets: the template alone
    [cpu] = [c for c in plain.spec.containers if c.name == "base"]
    assert not (cpu.resources and cpu.resources.limits)


def test_only_gpu_stages_under_kubernetes_get_an_override() -> None:
    from action100m_airflow.pods import executor_options
    from airflow.serialization.serialized_objects import BaseSerialization

    assert executor_options("cpu", K8S) == {}
    assert executor_options("gpu_service", K8S) == {}  # captions only call the vLLM server
    assert executor_options("gpu", {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}) == {}
    both = executor_options("gpu", {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor,KubernetesExecutor"})
    assert both["executor"] == "KubernetesExecutor"  # sent to Kubernetes, the rest stays on Celery
    restored = BaseSerialization.deserialize(BaseSerialization.serialize(both["executor_config"]))
    assert restored["pod_override"].spec.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
