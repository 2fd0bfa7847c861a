"""An Airflow notifier for the tests: appends what it was told to a JSON Lines file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airflow.sdk import BaseNotifier


class FileNotifier(BaseNotifier):
    """Writes the run, the task (if any) and the exception (if any) of each call to ``path``."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def notify(self, context: Any) -> None:
        ti = context.get("ti")
        run = context.get("dag_run")
        entry = {
            "run_id": getattr(run, "run_id", None) or context.get("run_id"),
            "task_id": getattr(ti, "task_id", None),
            "video": getattr(ti, "rendered_map_index", None),
            "exception": str(context.get("exception") or ""),
            "reason": context.get("reason"),  # a DAG run's callback says why the run ended
        }
        with Path(self.path).open("a") as out:
            out.write(json.dumps(entry) + "\n")
