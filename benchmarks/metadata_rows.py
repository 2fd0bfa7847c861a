"""Rows one video adds to Airflow's metadata database, and what ``action100m_maintenance`` frees.

    python benchmarks/metadata_rows.py [--sizes 1 4] [--json OUT]

On a real Airflow (scheduler, DAG processor, triggerer, API server, PostgreSQL; tests'
``AirflowStack``), one ``action100m`` run per N (tiny profile, fresh short videos): every table's
row count is read before and after each run; the difference is that run's rows. Per video is the
slope between the two sizes (what a further video adds; the run's own rows cancel out). Then the
maintenance DAG with every row aged past its retention shows what ``db clean`` takes away.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from airflow_stack import AirflowStack  # noqa: E402
from orchestration import make_videos  # noqa: E402


def table_counts(engine: Any) -> dict[str, int]:
    from sqlalchemy import inspect, text

    with engine.connect() as conn:
        names = inspect(conn).get_table_names()
        return {n: conn.execute(text(f'SELECT count(*) FROM "{n}"')).scalar_one() for n in names}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {n: after[n] - before.get(n, 0) for n in after if after[n] != before.get(n, 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[1, 4])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from sqlalchemy import create_engine, text

    with tempfile.TemporaryDirectory(prefix="a100m-rows-") as tmp:
        work = Path(tmp)
        env = {"ACTION100M_STORE": (work / "store").as_uri(),
               "ACTION100M_ALLOWED_SOURCES": work.as_uri()}  # fmt: skip
        with AirflowStack(work / "airflow", env=env, pools={"gpu": 1, "llm": 2}) as stack:
            engine = create_engine(stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
            runs: dict[int, dict[str, int]] = {}
            for size in args.sizes:
                videos = make_videos(work / "videos", f"rows{size}", size, 3.0)
                before = table_counts(engine)
                run_id = stack.trigger("action100m", {"videos": videos, "profile": "tiny"})
                assert stack.wait(run_id, "action100m", timeout=900) == "success"
                runs[size] = delta(before, table_counts(engine))
                print(f"N={size}: {sum(runs[size].values())} rows {runs[size]}", flush=True)
            low, high = args.sizes
            tables = sorted(set(runs[low]) | set(runs[high]))
            per_video = {
                n: (runs[high].get(n, 0) - runs[low].get(n, 0)) / (high - low) for n in tables
            }
            with engine.begin() as conn:  # every run so far is 60 days old (not the live jobs)
                for name, column in (("dag_run", "start_date"), ("task_instance", "start_date"),
                                     ("task_instance_history", "start_date"), ("xcom", "timestamp"),
                                     ("log", "dttm")):  # fmt: skip
                    conn.execute(
                        text(f"UPDATE {name} SET {column} = {column} - interval '60 days'")
                    )
            before = table_counts(engine)
            run_id = stack.trigger("action100m_maintenance", {"retention_days": 30})
            assert stack.wait(run_id, "action100m_maintenance", timeout=300) == "success"
            cleaned = delta(before, table_counts(engine))
            engine.dispose()
    # The DAG's own definition (a new version when a file changes) is not a video's.
    definition = {"dag_version", "dag_code", "serialized_dag", "deadline_alert", "dag"}
    per_video = {n: v for n, v in per_video.items() if n not in definition}
    result = {"runs": runs, "per_video": per_video, "cleaned": cleaned}
    print("per video:", {n: v for n, v in per_video.items() if v})
    print("total per video:", sum(per_video.values()))
    print("maintenance run, rows removed (negative) or added:", cleaned)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
