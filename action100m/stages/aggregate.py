"""Stage 3: the five-field annotation of the nodes of ``aggregate.min_duration`` or more that
have parts (as the release: ``aggregate.targets=all`` takes leaves of that length too).

Reads the tree, the captions and the video's metadata; asks the LLM with Self-Refine
(:mod:`action100m.llm.refine`) for each node in a bounded thread pool under shared rate limits;
writes ``aggregate/{key}/annotations.json`` and ``usage.json``, then ``_SUCCESS``.

Outcomes: a node whose answers stay invalid (or whose request the endpoint rejects, or that fails
in a way nobody planned for) carries an ``error`` and the video goes on. An invalid key or unknown
model stops the video at once (PermanentError). A node whose requests still hit 429s, 5xx, timeouts
or a dead endpoint after every retry makes the task fail with ServiceError once the other nodes are
done: the retry asks again only for nodes without a cached valid answer (a node whose valid answer
came from a repair turn pays for its invalid draft again). A video whose every node failed raises.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

from action100m.config import AggregateConfig, Settings
from action100m.errors import PermanentError, ServiceError, StoreError
from action100m.llm.batch_api import make_batch_api
from action100m.llm.batch_run import BatchPending, BatchRun, BatchSession
from action100m.llm.budget import Budget, BudgetReached
from action100m.llm.clients import CONNECTION, ChatClient, credentials, make_client
from action100m.llm.prompts import PromptBuilder
from action100m.llm.ratelimit import RateLimiter, RetryPolicy
from action100m.llm.refine import Session, annotate_node
from action100m.llm.templates import PromptTemplates, load_templates
from action100m.services import KEY_ENV, Services
from action100m.sources import allowed_locations, check_allowed, load_metadata
from action100m.stages.base import Runtime, Stage, StageContext, StageOutput
from action100m.store import ArtifactStore
from action100m.tree import Node

log = logging.getLogger(__name__)


def annotation_targets(nodes: list[Node], cfg: AggregateConfig) -> list[Node]:
    """The nodes Stage 3 annotates: long enough and, as in the release, not leaves (unless
    ``targets`` is ``all``)."""
    return [
        node
        for node in nodes
        if node.lasts(cfg.min_duration) and (cfg.targets == "all" or not node.is_leaf)
    ]


def prompt_templates(cfg: AggregateConfig, store_root: str) -> PromptTemplates:
    """Ours, or the prompt module ``aggregate.prompt_file`` where runs may read it."""
    if cfg.prompt_file is None:
        return load_templates()
    uri = check_allowed(cfg.prompt_file, allowed_locations(store_root), "aggregate.prompt_file")
    return load_templates(uri)


def llm_unavailable_reason(settings: Settings, services: Services | None = None) -> str | None:
    """None when an LLM is configured, else one sentence saying why aggregation is skipped.
    ``services`` defaults to the providers' usual variables."""
    cfg = settings.aggregate
    api_key, base_url = credentials(cfg, services)
    if api_key or base_url:
        return None
    return (
        f"no LLM configured for aggregation: set {KEY_ENV[cfg.provider]} (or the Airflow "
        f"connection {CONNECTION[cfg.provider]}), or aggregate.base_url for an "
        "OpenAI-compatible server"
    )


def _session(
    settings: Settings, store: ArtifactStore, services: Services | None = None, video_id: str = ""
) -> Session:
    cfg = settings.aggregate
    limiter = RateLimiter(
        cfg.requests_per_minute / cfg.rate_share,
        cfg.tokens_per_minute / cfg.rate_share,
        cfg.concurrency,
        RetryPolicy(max_retries=cfg.max_retries),
    )
    batch = cfg.mode == "batch"
    client: ChatClient = make_batch_api(cfg, services) if batch else make_client(cfg, services)
    wanted = cfg.budget_usd is not None or cfg.budget_scope is not None
    budget = Budget(store, cfg, video_id, resume=not batch) if wanted else None
    return Session(client, limiter, store, cfg, budget=budget)


def _usage_summary(session: Session, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    prices = session.cfg.effective_prices()
    return {
        "provider": session.client.provider,
        "model": session.client.model,
        "mode": session.cfg.mode,
        "nodes_annotated": sum(1 for r in results.values() if r["annotation"] is not None),
        "nodes_failed": sum(1 for r in results.values() if r["error"]),
        **session.usage.to_json(),
        "cost_usd": round(session.usage.cost(prices), 6),
        "cache_hits": session.cache_hits,
        "paid_this_run": session.paid.to_json(),
        "paid_cost_usd": round(session.paid.cost(prices), 6),
        "rate_limit_wait_s": round(session.limiter.waited, 3),
        "prices": prices,
    }


def _annotate(session: Session, builder: PromptBuilder, node: Node, what: str) -> dict[str, Any]:
    """One node; a permanent failure (bad key, unknown model) stops every other node too."""
    try:
        return annotate_node(session, builder, node, what)
    except PermanentError:
        session.abort.set()
        raise


def _failed(error: str | None) -> dict[str, Any]:
    return {"annotation": None, "error": error, "rounds": []}


def _annotate_all(
    session: Session, builder: PromptBuilder, targets: list[Node], video_id: str
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every target node in a bounded pool: ``(results by node id, errors worth a retry)``."""
    results: dict[str, dict[str, Any]] = {}
    transient: list[str] = []
    stopped: BudgetReached | None = None
    with ThreadPoolExecutor(session.cfg.concurrency, thread_name_prefix="aggregate") as pool:
        futures: dict[Future[dict[str, Any]], Node] = {
            pool.submit(
                _annotate, session, builder, node,
                f"video {video_id} node [{node.start:.1f}-{node.end:.1f}s]",
            ): node
            for node in targets
        }  # fmt: skip
        try:
            for future in as_completed(futures):
                node = futures[future]
                try:
                    results[node.node_id] = future.result()
                except BudgetReached as exc:  # the others stop at their next request too
                    stopped = exc
                    results[node.node_id] = _failed(str(exc))
                except (ServiceError, StoreError) as exc:
                    transient.append(str(exc))
                    results[node.node_id] = _failed(str(exc))
                except PermanentError as exc:  # a bad key or model: every node would fail so
                    if str(exc).startswith(f"video {video_id}:"):
                        raise
                    raise PermanentError(f"video {video_id}: {exc}") from exc
                except Exception as exc:  # a bug or an answer nobody planned for: this node only
                    log.exception("video %s: node %s failed unexpectedly", video_id, node.node_id)
                    results[node.node_id] = _failed(f"unexpected {type(exc).__name__}: {exc}")
                if error := results[node.node_id]["error"]:
                    log.warning("video %s: node %s failed: %s", video_id, node.node_id, error)
                log.info("video %s: annotated %d/%d nodes", video_id, len(results), len(targets))
        except BaseException:
            session.abort.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    if stopped is not None:
        raise stopped
    return results, transient


def _annotate_batch(
    ctx: StageContext, session: Session, builder: PromptBuilder, targets: list[Node]
) -> tuple[dict[str, dict[str, Any]], BatchSession]:
    """Every target node through the batch API (:mod:`action100m.llm.batch_run`): steps until
    done, waiting ``batch_poll_interval`` between polls, or raises BatchPending when the
    runtime defers (Airflow)."""
    cfg, video_id = session.cfg, ctx.video_id
    run = BatchRun(session.client, session, builder, targets, ctx.folder, video_id)  # type: ignore[arg-type]
    try:
        while True:
            step = run.step()
            if step.results is not None:
                return step.results, step.session
            job = step.job or {}
            message = (f"video {video_id}: batch job {job.get('number')} ({job.get('id')}) "
                       f"{job.get('provider_status', 'submitted')}, {job.get('items')} request(s)")  # fmt: skip
            if ctx.runtime.defer_batches:
                raise BatchPending(message, job, cfg.batch_poll_interval)
            log.info("%s; next poll in %.0f s", message, cfg.batch_poll_interval)
            time.sleep(cfg.batch_poll_interval)
    finally:
        if run.session is not None and session.budget is not None:
            session.budget.record(run.session.paid.cost(cfg.effective_prices()))


def _log_usage(video_id: str, usage: dict[str, Any], failed: int, seconds: float) -> None:
    log.info(
        "video %s: %d annotated, %d failed in %.1f s; %d requests (%d from cache), "
        "%d tokens in (%d cached), %d out, about $%.4f",
        video_id, usage["nodes_annotated"], failed, seconds, usage["requests"],
        usage["cache_hits"], usage["input_tokens"], usage["cached_input_tokens"],
        usage["output_tokens"], usage["cost_usd"],
    )  # fmt: skip


class AggregateStage(Stage):
    name = "aggregate"
    settings_section = "aggregate"
    help = "stage 3: structured annotations of the long nodes with the LLM"
    needs = ("caption", "segment")

    def unavailable(self, runtime: Runtime) -> str | None:
        return llm_unavailable_reason(runtime.settings, runtime.services)

    def reusable(self, done_info: dict[str, Any]) -> bool:
        # The release's own annotations fill the slot until aggregate runs for real.
        return not done_info.get("imported") and self.pending(done_info) is None

    def pending(self, done_info: dict[str, Any]) -> str | None:
        failed = int(done_info.get("failed") or 0)
        if not failed:
            return None
        return (
            f"{failed} node(s) without a valid annotation (see their errors); the next run asks "
            "again for those only"
        )

    def process(self, ctx: StageContext) -> StageOutput:
        cfg, video_id = ctx.settings.aggregate, ctx.video_id
        tree = ctx.tree()
        captions = ctx.read_input("caption", "captions.json").get("nodes", {})
        metadata = load_metadata(ctx.store, video_id)
        templates = prompt_templates(cfg, ctx.store.root)
        whole = cfg.transcript == "whole"
        builder = PromptBuilder(tree, captions, metadata, cfg.max_prompt_tokens, templates, whole)
        targets = annotation_targets(tree.nodes, cfg)
        session = _session(ctx.settings, ctx.store, ctx.runtime.services, video_id)
        started = time.monotonic()
        log.info(
            "video %s: annotating %d of %d nodes (%s, >= %.1f s) with %s %s, %d rounds",
            video_id, len(targets), len(tree), "all" if cfg.targets == "all" else "not leaves",
            cfg.min_duration, cfg.provider, cfg.model,
            cfg.rounds,
        )  # fmt: skip
        transient: list[str] = []
        if cfg.mode == "batch":
            results, session = _annotate_batch(ctx, session, builder, targets)
        else:
            try:
                results, transient = _annotate_all(session, builder, targets, video_id)
            finally:
                if session.budget is not None:
                    session.budget.record(session.paid.cost(cfg.effective_prices()))
        failed = sum(1 for r in results.values() if r["error"])
        usage = _usage_summary(session, results)
        _log_usage(video_id, usage, failed, time.monotonic() - started)
        if transient:
            raise ServiceError(
                f"video {video_id}: {len(transient)} of {len(targets)} nodes hit service errors "
                f"after every retry, e.g. {transient[0]}; a retry asks only for those (answers "
                "so far are cached)"
            )
        if targets and failed == len(targets):
            raise PermanentError(
                f"video {video_id}: every node failed aggregation, e.g. "
                f"{next(iter(results.values()))['error']}"
            )
        nodes = {node.node_id: results.get(node.node_id, _failed(None)) for node in tree.nodes}
        annotations = {"model": cfg.model, "provider": cfg.provider, "nodes": nodes}
        return StageOutput(
            {"annotations.json": annotations, "usage.json": usage},
            {"annotated": len(targets) - failed, "failed": failed},
        )


STAGE = AggregateStage()
