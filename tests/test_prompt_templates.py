"""Stage 3 in the release's structure: prompt modules read with ``ast``, the nested answer, and the
release's choice of nodes (not leaves) by default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_aggregate import VIDEO, annotations, llm, run_aggregate, settings, write_inputs

from action100m.errors import PermanentError
from action100m.llm.schema import AnswerError, parse_answer
from action100m.llm.templates import load_templates

__all__ = ["llm", "settings"]  # fixtures, shared with test_aggregate

# A prompt module in the release's layout (our own words): the response structure built with
# json.dumps, the times in the task, the release's spelling of its placeholder, and code that
# must never run.
RELEASE_STYLE = '''
import json
raise SystemExit("this module was executed")

RESPONSE_STRUCTURE = json.dumps({"type": "object", "properties": {
    "summary": {"type": "object", "properties": {"brief": {"type": "string"},
                                                  "detailed": {"type": "string"}}},
    "action": {"type": "object", "properties": {"brief": {"type": "string"},
               "detailed": {"type": "string"}, "actor": {"type": "string"}}}}},
    ensure_ascii=False)

TASK_TEMPLATE = """Summarise the part from {start_time} to {end_time} s of a video that runs
from {global_start_time} to {global_end_time} s. Think first, then give JSON:
{response_strucutre}
"""

INPUT_TEMPLATE = """
# Video metadata

```yaml
{video_metadata}
```

# Global video context
{global_tree}

# Current segment to be processed

{current_tree}
"""

REFINE_INSTRUCTION = """Check the draft above and revise it."""
'''


def _module(tmp_path: Path, text: str, name: str = "prompt.py") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_our_default_prompt_is_shared_by_every_node() -> None:
    templates = load_templates()
    assert not templates.system_varies
    system = templates.system(5.0, 8.0, 0.0, 20.0)
    assert system == templates.system(0.0, 20.0, 0.0, 20.0)
    schema = templates.schema()
    assert schema is not None and set(schema["properties"]) == {"summary", "action"}
    assert json.dumps(schema["properties"]["action"]["required"]) in system.replace("\n", "")


def test_a_release_style_module_is_read_without_running_it(tmp_path: Path) -> None:
    templates = load_templates(_module(tmp_path, RELEASE_STYLE))
    assert templates.system_varies
    system = templates.system(5.0, 8.0, 0.0, 20.0)
    assert system.startswith("Summarise the part from 5.00 to 8.00 s")
    assert '"actor": {"type": "string"}' in system
    shared, after = templates.user("title: T", "## [0.0s-20.0s] (20.0 s)\nall")
    assert "```yaml\ntitle: T\n```" in shared and shared.endswith("to be processed\n\n")
    assert after == "\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (None, "FileNotFoundError"),
        ("TASK_TEMPLATE = 'x {response_structure}'\n", "no string constant INPUT_TEMPLATE"),
        (RELEASE_STYLE.replace("{global_tree}", "{secrets}"), r"unknown \['secrets'\]"),
        (RELEASE_STYLE.replace("{current_tree}", "(none)"), r"missing \['current_tree'\]"),
        (RELEASE_STYLE.replace("{end_time}", "{}"), "positional"),
        ("TASK_TEMPLATE = (\n", "SyntaxError"),
    ],
)
def test_a_bad_prompt_module_is_one_line(tmp_path: Path, text: str | None, problem: str) -> None:
    path = tmp_path / "bad.py" if text is None else _module(tmp_path, text, "bad.py")
    with pytest.raises(PermanentError, match=problem) as error:
        load_templates(path)
    assert "\n" not in str(error.value) and "bad.py" in str(error.value)


def test_the_release_answer_and_reasoning_before_it_parse() -> None:
    nested = {
        "summary": {"brief": "A man sands.", "detailed": "He sands a board."},
        "action": {"brief": "sand a board", "detailed": "Sand it.", "actor": "a man"},
    }
    draft = {**nested, "action": {**nested["action"], "brief": "sketch"}}
    text = f"Reasoning: an early idea was {json.dumps(draft)}.\nFinal:\n{json.dumps(nested)}"
    answer = parse_answer(text)
    assert answer.brief_action == "sand a board" and answer.detailed_caption == "He sands a board."
    assert answer.nested() == nested
    flat = parse_answer(json.dumps(answer.model_dump()))  # the flat form is still accepted
    assert flat == answer
    with pytest.raises(AnswerError, match="actor"):
        parse_answer(json.dumps({**nested, "action": {"brief": "b", "detailed": "d"}}))


def test_release_targets_leave_out_leaves(settings, store, llm) -> None:
    settings.aggregate.targets = "release"
    tree = write_inputs(settings, store)
    run_aggregate(settings, store, VIDEO)
    nodes = annotations(settings, store)
    annotated = {n.node_id for n in tree.nodes if nodes[n.node_id]["annotation"]}
    expected = {n.node_id for n in tree.nodes if not n.is_leaf and n.lasts(4.0)}
    assert annotated == expected and len(expected) == 4
    assert any(n.is_leaf and n.lasts(4.0) for n in tree.nodes)  # long leaves exist, left out
    assert len(llm.requests) == 3 * len(expected)


def test_a_prompt_file_in_the_store_drives_stage_3(settings, store, llm, tmp_path) -> None:
    path = Path(store.root.removeprefix("file://")) / "prompts" / "paper.py"
    path.parent.mkdir(parents=True)
    path.write_text(RELEASE_STYLE)
    settings.aggregate.prompt_file = str(path)
    write_inputs(settings, store)
    run_aggregate(settings, store, VIDEO)
    first = llm.requests[0]
    system = first.body["messages"][0]["content"]
    assert system.startswith("Summarise the part from ")
    assert "# Current segment to be processed" in first.prompt and "```yaml" in first.prompt
    refines = [r for r in llm.requests if r.answers_so_far]
    assert refines and all(r.last_user == "Check the draft above and revise it." for r in refines)
    # a file outside the store (and ACTION100M_ALLOWED_SOURCES) is refused, in one line
    settings.aggregate.prompt_file = str(_module(tmp_path, RELEASE_STYLE, "outside.py"))
    settings.aggregate.model = "other"  # another key: not the finished output
    with pytest.raises(PermanentError, match="aggregate.prompt_file .* is outside"):
        run_aggregate(settings, store, VIDEO)


def test_structured_output_binds_the_answer_to_the_schema(settings, store, llm) -> None:
    write_inputs(settings, store)
    run_aggregate(settings, store, VIDEO)
    request = llm.requests[0]
    response_format = request.body["response_format"]
    assert response_format["type"] == "json_schema" and response_format["json_schema"]["strict"]
    schema = response_format["json_schema"]["schema"]
    assert schema["required"] == ["summary", "action"] and not schema["additionalProperties"]
    assert schema["properties"]["action"]["required"] == ["brief", "detailed", "actor"]
    assert all(json.loads(r.answers_so_far[-1]).keys() == {"summary", "action"}
               for r in llm.requests if r.answers_so_far)  # fmt: skip
    assert all(n["error"] is None for n in annotations(settings, store).values())


def test_anthropic_answers_through_a_forced_tool(settings, store, llm, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    settings.aggregate.provider = "anthropic"
    settings.aggregate.model = "claude-scripted"
    settings.aggregate.base_url = llm.anthropic_base_url
    write_inputs(settings, store)
    run_aggregate(settings, store, VIDEO)
    body = llm.requests[0].body
    assert body["tool_choice"] == {"type": "tool", "name": "annotation"}
    assert body["tools"][0]["input_schema"]["required"] == ["summary", "action"]
    done = [n for n in annotations(settings, store).values() if n["annotation"]]
    assert done and all(n["annotation"]["brief_action"].startswith("brief_action") for n in done)


def test_structured_output_can_be_switched_off(settings, store, llm) -> None:
    settings.aggregate.structured_output = False
    write_inputs(settings, store)
    run_aggregate(settings, store, VIDEO)
    assert all("response_format" not in r.body for r in llm.requests)
    assert all(n["error"] is None for n in annotations(settings, store).values())


def test_a_piecewise_transcript_keeps_speech_out_of_the_shared_prefix(settings, store, llm) -> None:
    settings.aggregate.transcript = "piecewise"
    write_inputs(settings, store)  # a short timed transcript: whole by default
    run_aggregate(settings, store, VIDEO)
    prompts = [r.prompt for r in llm.requests]
    assert all("given piecewise" in p for p in prompts)
    assert any("Speech during it" in p for p in prompts)
