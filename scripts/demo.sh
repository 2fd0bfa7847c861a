#!/usr/bin/env bash
# The embedded demo, offline: a sample video through the `action100m` DAG (`airflow dags test`,
# SQLite, local-folder store, tiny models), then the result tree and where the artifacts are.
# With OPENAI_API_KEY / ANTHROPIC_API_KEY (or OPENAI_BASE_URL) set, the aggregate stage runs too;
# without, it is skipped and says why.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/airflow_env.sh
DEMO="$ACTION100M_DEMO"
VIDEO="$DEMO/videos/demo_cooking.mp4"
VIDEO_ID="$(basename "$VIDEO" .mp4)"
LOG="$DEMO/airflow-dags-test.log"
mkdir -p "$DEMO/videos"

echo "== Airflow home $AIRFLOW_HOME: database, pools, connections"
python scripts/airflow_setup.py

if [ ! -s "$VIDEO" ]; then
  echo "== making a sample video: $VIDEO (three scenes, 4 s each)"
  python -c "from action100m.samples import make_video; make_video('$VIDEO', [4.0, 4.0, 4.0])"
fi

echo "== airflow dags test action100m (profile tiny; full log: $LOG)"
CONF="{\"videos\": [\"$VIDEO\"], \"profile\": \"tiny\"}"
if ! airflow dags test action100m --conf "$CONF" >"$LOG" 2>&1; then
  tail -n 40 "$LOG"
  echo "demo: the DAG run failed; full log in $LOG" >&2
  exit 1
fi
REPORT="$(grep -o 'report written to [^ ]*' "$LOG" | tail -n 1 | cut -d' ' -f4)"
python - "$REPORT" <<'PY'
import sys

from action100m.report import format_report
from action100m.store import ArtifactStore

uri = sys.argv[1]
print(format_report(ArtifactStore(uri.rsplit("/", 1)[0]).read_json(uri)))
print(f"(run report: {uri})")
PY

echo "== action100m show $VIDEO_ID"
action100m --store "$ACTION100M_STORE" show "$VIDEO_ID"

EXPORT="$ACTION100M_STORE/exports/demo.parquet"
echo "== action100m export (the release's format): $EXPORT"
action100m --store "$ACTION100M_STORE" export --out "$EXPORT" "$VIDEO_ID" >/dev/null
python - "$EXPORT" <<'PY'
import sys

import pyarrow.parquet as pq

record = pq.read_table(sys.argv[1].removeprefix("file://")).to_pylist()[0]
parents = {node["parent_id"] for node in record["nodes"]}
root = record["nodes"][0]
leaf = next(node for node in record["nodes"] if node["node_id"] not in parents)
for name, node in (("root", root), ("a leaf", leaf)):
    print(f"{name} [{node['start']:.2f}-{node['end']:.2f}] level {node['level']}")
    for field in ("plm_caption", "plm_action", "llama3_caption"):
        value = node[field]
        print(f"  {field:<15} {value[:70]!r}" if isinstance(value, str) else f"  {field:<15} {value}")
    print(f"  {'gpt':<15} {node['gpt']}")
PY

echo "== artifacts"
echo "per-video document: $ACTION100M_STORE/videos/$VIDEO_ID/annotations.json"
echo "stage folders:      $ACTION100M_STORE/videos/$VIDEO_ID/{embed,segment,caption,aggregate}/"
echo "run reports:        $ACTION100M_STORE/runs/"
echo "The UI: source scripts/airflow_env.sh && airflow standalone   (http://localhost:8080)"
