"""The segment tree: binary, contiguous spans, nodes in depth-first pre-order.

``tree.json`` is the contract between stages: segment writes it, caption and aggregate read it.
Node ids are UUIDv5 of (video_id, start, end), so the same span always gets the same id.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/facebookresearch/action100m")


# Times are exact to the millisecond (node ids round to it): container time bases leave
# 11.9996875 s where 12 s was meant, and a span shown as 8.00-12.00 must count as 4 s.
TIME_RESOLUTION = 1e-3


def reaches(seconds: float, minimum: float) -> bool:
    """Whether a span of ``seconds`` lasts ``minimum`` or more, to the millisecond."""
    return seconds >= minimum - TIME_RESOLUTION / 2


def make_node_id(video_id: str, start: float, end: float) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{video_id}:{start:.3f}:{end:.3f}"))


@dataclass
class Node:
    node_id: str
    parent_id: str | None
    level: int
    start: float
    end: float
    children: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.end - self.start

    def lasts(self, minimum: float) -> bool:
        return reaches(self.duration, minimum)

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def middle(self) -> float:
        return (self.start + self.end) / 2


@dataclass
class Tree:
    video_id: str
    duration: float
    fps: float
    source: str
    nodes: list[Node]

    def __post_init__(self) -> None:
        self._by_id = {node.node_id: node for node in self.nodes}

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, node_id: str) -> Node:
        return self._by_id[node_id]

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def leaves(self) -> list[Node]:
        return [node for node in self.nodes if node.is_leaf]

    def children(self, node: Node) -> list[Node]:
        return [self._by_id[c] for c in node.children]

    def subtree(self, node: Node, max_depth: int | None = None) -> Iterator[Node]:
        """``node`` and its descendants in depth-first pre-order, at most ``max_depth`` below it."""
        stack = [node]
        while stack:
            current = stack.pop()
            if max_depth is not None and current.level - node.level > max_depth:
                continue
            yield current
            stack.extend(reversed(self.children(current)))

    def to_json(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "duration": self.duration,
            "fps": self.fps,
            "source": self.source,
            "nodes": [asdict(node) for node in self.nodes],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tree:
        return cls(
            video_id=data["video_id"],
            duration=float(data["duration"]),
            fps=float(data["fps"]),
            source=data["source"],
            nodes=[Node(**node) for node in data["nodes"]],
        )
