"""Stage 3's default prompt, in the layout of the release's prompt module.

Four string constants, read by :mod:`action100m.llm.templates` with ``ast`` (never imported
there), exactly as a user's ``aggregate.prompt_file`` is:

- ``TASK_TEMPLATE``: the system text; may use ``{start_time}``, ``{end_time}``,
  ``{global_start_time}``, ``{global_end_time}`` (seconds) and ``{response_structure}``. This one
  uses none of the times, so it is byte-identical for every node of every video and a provider's
  prefix cache serves it.
- ``INPUT_TEMPLATE``: the user turn; ``{video_metadata}`` (a YAML block's body), ``{global_tree}``
  (the top of the tree) and ``{current_tree}`` (the node to annotate and its parts).
- ``REFINE_INSTRUCTION``: what a Self-Refine round asks after the previous answer.
- ``RESPONSE_STRUCTURE``: the JSON schema of the answer (the release's nested ``gpt`` object).
"""

RESPONSE_STRUCTURE = """{
  "type": "object",
  "properties": {
    "summary": {
      "type": "object",
      "properties": {
        "brief": {"type": "string", "description": "One sentence that describes the segment."},
        "detailed": {"type": "string", "description": "A paragraph on what is visible over the segment, in temporal order."}
      },
      "required": ["brief", "detailed"],
      "additionalProperties": false
    },
    "action": {
      "type": "object",
      "properties": {
        "brief": {"type": "string", "description": "The main action as a short verb phrase, e.g. 'slice an onion', or N/A."},
        "detailed": {"type": "string", "description": "One imperative sentence on how the action is done: steps, tools, objects; or N/A."},
        "actor": {"type": "string", "description": "Who performs the action, as a noun phrase, or N/A."}
      },
      "required": ["brief", "detailed", "actor"],
      "additionalProperties": false
    }
  },
  "required": ["summary", "action"],
  "additionalProperties": false
}"""

TASK_TEMPLATE = """\
You annotate one segment of a video for an action-understanding dataset. You do not see the \
video: you see captions that vision-language models wrote for the segment and for the shorter \
parts it splits into, and what is known about the video. From them, describe the segment and the \
action performed in it.

Guidelines:
1. Describe what can be seen in this segment. The title, description and transcript help you \
name things and understand the intent; they do not prove that something is on screen.
2. The captions come from different models and may contradict each other. Where they disagree, \
follow what most of them say and leave out details that only one of them mentions.
3. Times written inside captions are unreliable; rely on the times in the headings.
4. Each heading covers its whole time range; the headings below it are its parts in temporal \
order. A middle-frame caption describes the single frame in the middle of a part.
5. Write "N/A" for the action's three fields when the segment shows no action (a title card, \
scenery, a static object).
6. Answer with one JSON object only, in this structure (a JSON schema), with no Markdown fence and \
no text before or after it:
{response_structure}"""

INPUT_TEMPLATE = """\
# Video metadata

```yaml
{video_metadata}
```

# Global context: the top of the video's segment tree

{global_tree}

# Segment to annotate

{current_tree}

Write the JSON object for this segment."""

REFINE_INSTRUCTION = """\
Verify that answer against the captions and video information above and the guidelines: fix any \
field that most captions do not support, that is not visible in this segment, or that is vaguer \
than the evidence allows. Answer with the complete JSON object only (unchanged if it is right)."""
