"""Kubernetes: the pod a GPU stage's task runs in under the KubernetesExecutor.

When ``[core] executor`` names the KubernetesExecutor (alone or in a list beside Celery), each
task of a ``gpu`` stage (a model on the GPU in the task itself: embed) gets an ``executor_config``
``pod_override``: its ``base`` container asks for ``nvidia.com/gpu`` (``ACTION100M_K8S_GPUS``, 1),
mounts the model cache (the claim ``ACTION100M_K8S_MODEL_CACHE_CLAIM``, ``action100m-model-cache``,
at ``ACTION100M_CACHE``, ``/opt/airflow/cache``), tolerates the GPU nodes' usual taint and, if
``ACTION100M_K8S_GPU_NODE_SELECTOR`` (JSON) says so, goes to those nodes. The executor merges it
into its pod template (``PodGenerator.construct_pod``), so everything else (image, service
account, environment) stays the deployment's. Where Kubernetes is one executor of several and
not the first, GPU stages are sent to it. Other executors: no change, and nothing imported.
"""

from __future__ import annotations

import json
import os
from typing import Any

KUBERNETES_EXECUTOR = "KubernetesExecutor"
GPU_RESOURCE = "gpu"
CACHE_VOLUME = "model-cache"


def executors(environ: dict[str, str] | None = None) -> list[str]:
    """The configured executors' names, in order (``[core] executor`` is a comma list)."""
    env = os.environ if environ is None else environ
    value = env.get("AIRFLOW__CORE__EXECUTOR")
    if value is None:
        from airflow.sdk import conf

        value = conf.get("core", "executor", fallback="LocalExecutor")
    return [name.strip().rsplit(".", 1)[-1].split(":")[-1] for name in str(value).split(",")]


def gpu_pod_override(environ: dict[str, str] | None = None) -> Any:
    """The ``V1Pod`` merged into a GPU stage's pod."""
    from kubernetes.client import models as k8s

    env = os.environ if environ is None else environ
    gpus = env.get("ACTION100M_K8S_GPUS", "1")
    cache = env.get("ACTION100M_CACHE", "/opt/airflow/cache")
    claim = env.get("ACTION100M_K8S_MODEL_CACHE_CLAIM", "action100m-model-cache")
    selector = json.loads(env.get("ACTION100M_K8S_GPU_NODE_SELECTOR") or "{}")
    return k8s.V1Pod(
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="base",  # the container the executor runs the task in
                    resources=k8s.V1ResourceRequirements(
                        limits={"nvidia.com/gpu": gpus}, requests={"nvidia.com/gpu": gpus}
                    ),
                    env=[k8s.V1EnvVar(name="ACTION100M_CACHE", value=cache)],
                    volume_mounts=[k8s.V1VolumeMount(name=CACHE_VOLUME, mount_path=cache)],
                )
            ],
            volumes=[
                k8s.V1Volume(
                    name=CACHE_VOLUME,
                    persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                        claim_name=claim
                    ),
                )
            ],
            tolerations=[
                k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
            ],
            node_selector=selector or None,
        )
    )


def executor_options(resource: str, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Task options for a stage of ``resource``: the GPU pod override under Kubernetes."""
    if resource != GPU_RESOURCE:
        return {}
    names = executors(environ)
    if KUBERNETES_EXECUTOR not in names:
        return {}
    options: dict[str, Any] = {"executor_config": {"pod_override": gpu_pod_override(environ)}}
    if names[0] != KUBERNETES_EXECUTOR:
        options["executor"] = KUBERNETES_EXECUTOR
    return options
