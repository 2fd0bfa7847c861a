# Source me: the Airflow environment of this checkout (the embedded demo and `airflow standalone`).
#   source scripts/airflow_env.sh && airflow standalone
# Everything stays inside the checkout under .demo/: Airflow home .demo/airflow (SQLite), artifacts
# .demo/artifacts, tiny models .demo/models; `make clean` removes it.
# Anything already set in the environment wins (e.g. ACTION100M_STORE=s3://bucket, or
# ACTION100M_DEMO=/elsewhere for the whole demo folder).
ACTION100M_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ACTION100M_DEMO="${ACTION100M_DEMO:-$ACTION100M_REPO/.demo}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ACTION100M_DEMO/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ACTION100M_REPO/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ACTION100M_REPO/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
# Airflow's LocalExecutor that holds a parallelism slot per started task, so priorities decide
# what runs next (plugins/action100m_airflow/local_executor.py says why).
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-action100m_airflow.local_executor.LocalExecutor}"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}"
export ACTION100M_STORE="${ACTION100M_STORE:-file://$ACTION100M_DEMO/artifacts}"
# What a triggered run may read besides the store: the demo folder (its sample videos).
export ACTION100M_ALLOWED_SOURCES="${ACTION100M_ALLOWED_SOURCES:-file://$ACTION100M_DEMO}"
export ACTION100M_PRELOAD="${ACTION100M_PRELOAD:-1}"  # plugins/action100m_preload.py
# The demo is offline: the trigger form's default profile is the tiny models, not the paper's.
export ACTION100M_PROFILE="${ACTION100M_PROFILE:-tiny}"
# Slots of the llm pool; aggregate tasks split the LLM rate limits by it (aggregate.rate_share).
export LLM_POOL_SLOTS="${LLM_POOL_SLOTS:-4}"
# Slots of the vlm pool: caption tasks at once against the vLLM server.
export VLM_POOL_SLOTS="${VLM_POOL_SLOTS:-4}"
# Slots of the download pool: fetch tasks (yt-dlp) at once.
export DOWNLOAD_POOL_SLOTS="${DOWNLOAD_POOL_SLOTS:-4}"
# The demo's SQLite database needs no housekeeping: action100m_maintenance only when triggered.
export ACTION100M_MAINTENANCE_SCHEDULE="${ACTION100M_MAINTENANCE_SCHEDULE:-none}"
export ACTION100M_CACHE="${ACTION100M_CACHE:-$ACTION100M_DEMO/models}"
# `airflow standalone` starts `airflow` subprocesses: the venv's bin must be on PATH.
if [ -d "$ACTION100M_REPO/.venv/bin" ]; then
  case ":$PATH:" in *":$ACTION100M_REPO/.venv/bin:"*) ;; *) export PATH="$ACTION100M_REPO/.venv/bin:$PATH" ;; esac
fi
