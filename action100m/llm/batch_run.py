"""Stage 3 through a batch API, as a resumable state machine persisted in the store.

Self-Refine is a chain per node (draft, refine, refine, with repair turns between), so a video is
annotated in jobs: each job carries the next request of every unfinished node; a node's first job
holds its draft, the next its first refine (or a repair of an invalid draft), and so on. Nothing
here re-implements the rounds: :func:`~action100m.llm.refine.annotate_node` is replayed from the
start on every step with a :class:`BatchSession`, whose ``ask`` answers from the jobs collected so
far, then from the cache, and otherwise notes the request as wanted and stops that node
(:class:`AwaitingBatch`). What the nodes want is the next job.

State, under the stage's keyed folder (so another model or prompt starts afresh):
``batch/state.json`` (every job: id, items, status) and ``batch/{job}.json`` (a collected job's
answers and errors, written before the job is marked collected). A step polls the last job if it
is still out, never submitting while one is in flight: a retried or resumed task picks up the
same job. An item that failed or expired is wanted again, so it goes into the next job; one that
failed in ``aggregate.batch_max_attempts`` jobs fails its node as a rejected request would.
Valid answers are validated and cached exactly as interactive ones (``annotate_node`` does it),
and usage counts them the same way, priced at ``aggregate.batch_discount``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from action100m.errors import Action100MError
from action100m.llm.batch_api import BatchAPI, JobResults
from action100m.llm.messages import ChatRequest, Completion
from action100m.llm.prompts import PromptBuilder
from action100m.llm.ratelimit import RequestRejected
from action100m.llm.refine import Session, annotate_node
from action100m.tree import Node

log = logging.getLogger(__name__)


class BatchPending(Action100MError):
    """A job is out: the caller waits (or, under Airflow, defers) and steps again."""

    def __init__(self, message: str, job: dict[str, Any], poll_interval: float) -> None:
        super().__init__(message)
        self.job, self.poll_interval = job, poll_interval


class AwaitingBatch(Exception):  # noqa: N818 (a signal, not an error)
    """The request has no answer yet: it goes into the next job."""


@dataclass
class BatchSession(Session):
    """A session that never calls the endpoint: answers come from collected jobs or the cache."""

    answers: dict[str, Completion] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    wanted: dict[str, ChatRequest] = field(default_factory=dict)

    def ask(self, request: ChatRequest, what: str) -> tuple[Completion, bool]:
        key = request.cache_key(self.client.provider, self.client.model)
        if key in self.answers:  # paid for in a job of this video
            completion = self.answers[key]
            with self.lock:
                self.usage.add(completion.usage)
                self.paid.add(completion.usage)
            return completion, False
        try:
            completion = Completion.from_json(
                self.store.read_json(self.cache_uri(request))["completion"]
            )
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            errors = self.failures.get(key, [])
            if len(errors) >= self.cfg.batch_max_attempts:
                raise RequestRejected(
                    f"{what}: no answer in {len(errors)} batch jobs: {errors[-1]}"
                ) from None
            self.wanted[key] = request
            raise AwaitingBatch(key) from None
        with self.lock:
            self.usage.add(completion.usage)
            self.cache_hits += 1
        return completion, True


@dataclass
class Step:
    """What a step left: the nodes' results once every node is done, else the job out."""

    results: dict[str, dict[str, Any]] | None
    job: dict[str, Any] | None
    session: BatchSession


class BatchRun:
    """One video's batch annotation; :meth:`step` is safe to call again at any time."""

    def __init__(
        self,
        api: BatchAPI,
        session: Session,
        builder: PromptBuilder,
        targets: list[Node],
        folder: str,
        video_id: str,
    ) -> None:
        self.api, self.template, self.builder = api, session, builder
        self.targets, self.video_id = targets, video_id
        self.store = session.store
        self.folder = f"{folder.rstrip('/')}/batch"
        self.session: BatchSession | None = None  # the last step's

    @property
    def state_uri(self) -> str:
        return f"{self.folder}/state.json"

    def load(self) -> dict[str, Any]:
        try:
            state = self.store.read_json(self.state_uri)
        except FileNotFoundError:
            return {"jobs": []}
        return (
            state
            if isinstance(state, dict) and isinstance(state.get("jobs"), list)
            else {"jobs": []}
        )

    def _save(self, state: dict[str, Any]) -> None:
        self.store.write_json(self.state_uri, state)

    def step(self) -> Step:
        """Poll the job out (collecting it once finished), else replay and submit the next."""
        state = self.load()
        self._adopt(state)
        out = next((j for j in state["jobs"] if j["status"] == "submitted"), None)
        if out is not None:
            job_state = self.api.state(out["id"])
            out.update(provider_status=job_state.status, counts=job_state.counts)
            if not job_state.finished:
                self._save(state)
                self.session = self._session(state)
                return Step(None, out, self.session)
            self._collect(out)
            self._save(state)
        session = self._session(state)
        self.session = session
        results = self._replay(session)
        if not session.wanted:
            return Step(results, None, session)
        if session.budget is not None:
            session.budget.check(session.paid.cost(session.cfg.effective_prices()))
        job = self._submit(state, session.wanted)
        return Step(None, job, session)

    def _submit(self, state: dict[str, Any], wanted: dict[str, ChatRequest]) -> dict[str, Any]:
        """The next job, its intent recorded first: a task that dies between the provider's
        answer and the state's write finds the job again (:meth:`_adopt`) instead of paying
        for it twice."""
        number = len(state["jobs"]) + 1
        label = f"{self.video_id}-{number}"
        state["submitting"] = {"label": label, "at": time.time(), "keys": sorted(wanted)}
        self._save(state)
        job_id = self.api.submit(wanted, label)
        self._record(state, job_id)
        job: dict[str, Any] = state["jobs"][-1]
        log.info("video %s: batch job %d (%s) submitted with %d request(s)", self.video_id,
                 number, job_id, len(wanted))  # fmt: skip
        return job

    def _record(self, state: dict[str, Any], job_id: str) -> None:
        intent = state.pop("submitting")
        state["jobs"].append({"id": job_id, "number": len(state["jobs"]) + 1,
                              "status": "submitted", "items": len(intent["keys"]),
                              "keys": intent["keys"], "submitted_at": intent["at"]})  # fmt: skip
        self._save(state)

    def _adopt(self, state: dict[str, Any]) -> None:
        """A submission whose job was never recorded: the provider's job, if it has one."""
        intent = state.get("submitting")
        if not intent:
            return
        job_id = self.api.find(intent["label"], float(intent["at"]), len(intent["keys"]))
        if job_id is None:  # it never reached the provider: the next step submits it
            state.pop("submitting")
            self._save(state)
            return
        log.warning("video %s: batch job %s was submitted by an attempt that died before "
                    "recording it: polling it, not submitting again", self.video_id, job_id)  # fmt: skip
        self._record(state, job_id)

    def _collect(self, job: dict[str, Any]) -> None:
        """A finished job's answers and errors into the store, then the job marked collected;
        items without either (the job failed, expired or was cancelled) count as errors."""
        results: JobResults = self.api.results(job["id"])
        keys = set(job.get("keys") or [])
        for key in keys - results.answers.keys() - results.errors.keys():
            results.errors[key] = f"no result (job {job.get('provider_status')})"
        self.store.write_json(
            f"{self.folder}/{job['id']}.json",
            {"answers": {k: c.to_json() for k, c in results.answers.items()},
             "errors": results.errors},
        )  # fmt: skip
        job.update(status="collected", answered=len(results.answers), failed=len(results.errors))
        log.info("video %s: batch job %s %s: %d answered, %d failed", self.video_id, job["id"],
                 job.get("provider_status"), len(results.answers), len(results.errors))  # fmt: skip

    def _session(self, state: dict[str, Any]) -> BatchSession:
        t = self.template
        session = BatchSession(t.client, t.limiter, t.store, t.cfg, budget=t.budget)
        for job in state["jobs"]:
            if job["status"] != "collected":
                continue
            data = self.store.read_json(f"{self.folder}/{job['id']}.json")
            for key, value in data.get("answers", {}).items():
                session.answers[key] = Completion.from_json(value)
            for key, error in data.get("errors", {}).items():
                session.failures.setdefault(key, []).append(error)
        return session

    def _replay(self, session: BatchSession) -> dict[str, dict[str, Any]]:
        """Every node as far as the answers go; those waiting are left out of the results."""
        results: dict[str, dict[str, Any]] = {}
        for node in self.targets:
            what = f"video {self.video_id} node [{node.start:.1f}-{node.end:.1f}s]"
            try:
                results[node.node_id] = annotate_node(session, self.builder, node, what)
            except AwaitingBatch:
                continue
        return results
