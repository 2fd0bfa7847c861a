# action100m on the official Airflow image: one image for every Airflow role.
#   docker build -t action100m .                      CPU image (scheduler, API server, CPU worker)
#   docker build -t action100m-gpu --target gpu .     GPU worker (CUDA torch + vLLM)
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
# The vLLM engine of the GPU worker (caption.backend=vllm), pinned; it brings the CUDA torch it
# was built for. Override with --build-arg VLLM_VERSION=... (docker compose: VLLM_VERSION in .env).
ARG VLLM_VERSION=0.33.0
# The FAB auth manager's provider (production logins: users and roles in the metadata database),
# the release that supports Airflow 3.3 (it needs apache-airflow>=3.0.2; our constraints hold its
# other requirements). Compose keeps the simple auth manager unless .env picks FAB.
ARG FAB_PROVIDER_VERSION=3.10.2

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS cpu
ARG AIRFLOW_VERSION
ARG FAB_PROVIDER_VERSION
# The model cache (the `model-cache` volume in docker compose): made here, owned by the airflow
# user (uid 50000, group 0 as the official image does), so a fresh named volume mounted on it
# starts writable and Hugging Face weights can be downloaded into it.
USER root
# ffmpeg: the fetch stage (yt-dlp) merges a site's separate video and audio streams with it.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*
RUN mkdir -p /opt/airflow/cache/huggingface /opt/airflow/cache/action100m \
    && chown -R airflow:0 /opt/airflow/cache \
    && chmod -R g+rwX /opt/airflow/cache
# Non-root, as the official image is: everything below runs as the `airflow` user.
USER airflow
WORKDIR /opt/action100m
COPY --chown=airflow:0 requirements.txt constraints.txt pyproject.toml README.md ./
COPY --chown=airflow:0 action100m ./action100m
# The CPU build of torch comes from PyTorch's CPU index; our own constraints pin the rest, and
# Airflow is named in the step so that nothing moves it.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -c constraints.txt -r requirements.txt . "apache-airflow==${AIRFLOW_VERSION}" \
        "apache-airflow-providers-fab==${FAB_PROVIDER_VERSION}" \
    && python -c "import action100m, torch, transformers, airflow.providers.fab; print(torch.__version__)"
COPY --chown=airflow:0 scripts ./scripts
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
ENV ACTION100M_CACHE=/opt/airflow/cache/action100m \
    HF_HOME=/opt/airflow/cache/huggingface \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

FROM cpu AS gpu
ARG VLLM_VERSION
ARG AIRFLOW_VERSION
# The GPU worker: CUDA torch and the vLLM offline engine (caption.backend=vllm), both from PyPI.
# The CPU build of torch goes first (pip would otherwise keep torch==X+cpu where it satisfies
# vLLM's pin); vLLM then installs the CUDA torch it pins, with Airflow named in the same step so
# that vLLM cannot move it, and `pip check` fails the build if vLLM broke one of Airflow's
# dependencies. The check fails the build on CPU torch.
RUN pip uninstall -y torch torchvision torchaudio \
    && pip install --no-cache-dir "vllm==${VLLM_VERSION}" "apache-airflow==${AIRFLOW_VERSION}" \
    && pip check \
    && python -c "import torch, vllm; assert torch.version.cuda, 'CPU torch ' + torch.__version__; \
print(torch.__version__, 'CUDA', torch.version.cuda, 'vllm', vllm.__version__)"

# The default target (a plain `docker build .`) is the last stage: the small CPU image.
FROM cpu AS default
