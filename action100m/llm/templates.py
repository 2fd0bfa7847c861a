"""Prompt modules in the release's layout, read without running them.

A prompt module is a Python file defining ``TASK_TEMPLATE``, ``INPUT_TEMPLATE``,
``REFINE_INSTRUCTION`` and ``RESPONSE_STRUCTURE`` (see :mod:`action100m.llm.default_prompt`, ours).
``aggregate.prompt_file`` may name one, e.g. a checkout of the official repository's prompt
module, to get the paper's exact prompts. The file is parsed with ``ast`` and only module-level
string constants are taken (``RESPONSE_STRUCTURE`` may also be ``json.dumps(<literal>)``): nothing
in it is executed. Placeholders are checked against what the pipeline fills in.
"""

from __future__ import annotations

import ast
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

from action100m.errors import PermanentError
from action100m.store import normalise_uri

DEFAULT_FILE = Path(__file__).with_name("default_prompt.py")
TIMES = {"start_time", "end_time", "global_start_time", "global_end_time"}
# "response_strucutre" is the spelling in the official prompt module.
ALLOWED = {
    "TASK_TEMPLATE": TIMES | {"response_structure", "response_strucutre"},
    "INPUT_TEMPLATE": {"video_metadata", "global_tree", "current_tree"},
    "REFINE_INSTRUCTION": set(),
}
REQUIRED = {"INPUT_TEMPLATE": {"current_tree"}}
MAX_BYTES = 1_000_000
CURRENT = "\x00current-tree\x00"  # stands for the node's part while the shared part is rendered


@dataclass(frozen=True)
class PromptTemplates:
    task: str
    input: str
    refine: str
    response_structure: str
    source: str

    def system(self, start: float, end: float, video_start: float, video_end: float) -> str:
        times = {"start_time": f"{start:.2f}", "end_time": f"{end:.2f}",
                 "global_start_time": f"{video_start:.2f}", "global_end_time": f"{video_end:.2f}"}  # fmt: skip
        structure = self.response_structure
        return self.task.format(**times, response_structure=structure, response_strucutre=structure)

    @property
    def system_varies(self) -> bool:
        """Whether the system text names the node's times (then it differs node by node)."""
        return bool(_fields(self.task) & TIMES)

    def user(self, video_metadata: str, global_tree: str) -> tuple[str, str]:
        """The user turn split around ``{current_tree}``: (the part shared by every node of the
        video, what follows the node's tree)."""
        text = self.input.format(
            video_metadata=video_metadata, global_tree=global_tree, current_tree=CURRENT
        )
        shared, _, after = text.partition(CURRENT)
        return shared, after

    def schema(self) -> dict[str, Any] | None:
        """The answer's JSON schema, when RESPONSE_STRUCTURE is one, made strict (every object
        closed, every property required) as OpenAI's strict mode asks."""
        try:
            value = json.loads(self.response_structure)
        except ValueError:
            return None
        return strict_schema(value) if isinstance(value, dict) else None


def strict_schema(schema: Any) -> Any:
    """``schema`` with every object's properties required and no others allowed."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_schema(value) for key, value in schema.items()}
    if out.get("type") == "object" and isinstance(out.get("properties"), dict):
        out["required"] = list(out["properties"])
        out["additionalProperties"] = False
    return out


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _constant(node: ast.expr) -> str | None:
    """A string constant, or ``json.dumps(<literal>, ...)`` as JSON text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "dumps"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "json"
        and node.args
    ):
        try:
            return json.dumps(ast.literal_eval(node.args[0]), ensure_ascii=False)
        except ValueError:
            return None
    return None


def load_templates(path: str | Path | None = None) -> PromptTemplates:
    """The templates of the prompt module at ``path`` (default: ours); a file that is missing,
    not Python, lacks a template or uses an unknown placeholder is a one-line error."""
    path = str(path or DEFAULT_FILE)
    try:
        with fsspec.open(normalise_uri(path), "rb") as handle:
            source = handle.read(MAX_BYTES + 1)
        if len(source) > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES} bytes")
        tree = ast.parse(source.decode("utf-8"), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise PermanentError(f"aggregate.prompt_file {path}: {type(exc).__name__}: {exc}") from exc
    found: dict[str, str] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            value = _constant(statement.value)
            if isinstance(target, ast.Name) and value is not None:
                found[target.id] = value
    names = [*ALLOWED, "RESPONSE_STRUCTURE"]
    missing = [name for name in names if name not in found]
    if missing:
        raise PermanentError(
            f"aggregate.prompt_file {path}: no string constant {', '.join(missing)}"
        )
    for name, allowed in ALLOWED.items():
        try:
            fields = _fields(found[name])
        except ValueError as exc:
            raise PermanentError(f"aggregate.prompt_file {path}: {name}: {exc}") from exc
        positional = sorted(f for f in fields if not f or f.isdigit())
        unknown = fields - allowed - set(positional)
        absent = REQUIRED.get(name, set()) - fields
        if unknown or absent or positional:
            problem = (
                f"unknown {sorted(unknown)}"
                if unknown
                else f"missing {sorted(absent)}"
                if absent
                else "positional {} are not filled"
            )
            raise PermanentError(
                f"aggregate.prompt_file {path}: {name} placeholders: {problem}; "
                f"allowed: {', '.join(sorted(allowed)) or 'none'}"
            )
    return PromptTemplates(
        found["TASK_TEMPLATE"],
        found["INPUT_TEMPLATE"],
        found["REFINE_INSTRUCTION"],
        found["RESPONSE_STRUCTURE"],
        path,
    )
