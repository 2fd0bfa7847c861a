# action100m on the official Airflow image: one image for every Airflow role.
#   docker build -t action100m .                      CPU image (scheduler, API server, CPU worker)
#   docker build -t action100m-gpu --target gpu .     GPU worker (CUDA torch + vLLM)
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS cpu
# Non-root, as the official image is: everything below runs as the `airflow` user.
USER airflow
WORKDIR /opt/action100m
COPY --chown=airflow:0 requirements.txt constraints.txt pyproject.toml README.md ./
COPY --chown=airflow:0 action100m ./action100m
# The CPU build of torch comes from PyTorch's CPU index; our own constraints pin the rest.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -c constraints.txt -r requirements.txt . \
    && python -c "import action100m, torch, transformers; print(torch.__version__)"
COPY --chown=airflow:0 scripts ./scripts
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
ENV ACTION100M_CACHE=/opt/airflow/cache/action100m \
    HF_HOME=/opt/airflow/cache/huggingface \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

FROM cpu AS gpu
# The GPU worker: CUDA torch and the vLLM offline engine (caption.backend=vllm), both from PyPI.
# vLLM pins the torch it was built for, so torch is not constrained here.
RUN pip install --no-cache-dir --upgrade "torch" "vllm" \
    && python -c "import torch, vllm; print(torch.__version__, vllm.__version__)"
