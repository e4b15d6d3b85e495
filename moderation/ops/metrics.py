"""Every Prometheus metric the service exports, defined once.

Labels are bounded: policy and category ids come from the served policy files,
actions, bands, stages and status codes from fixed enums. Never a request id.
Shadow series carry the shadow's version; series of versions no longer served are
removed whenever the served set is published (every policy load), so their number
stays bounded by the served shadows, not by how many versions a server has seen.
"""

from __future__ import annotations

import sys
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# *_created series double the series count and no dashboard here uses them.
disable_created_metrics()

# The heavy training-stack modules whose presence moderation_python_module_loaded reports.
WATCHED_MODULES = ("torch", "open_clip", "transformers")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
# 0.05-wide buckets: the resolution thresholds are tuned at.
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


class ModerationMetrics:
    """The service's metric families, in a registry of their own (never prometheus_client's global one)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        registry = CollectorRegistry() if registry is None else registry
        self.registry = registry
        self.rpc_seconds = Histogram(
            "moderation_rpc_seconds",
            "Duration of every RPC by method and gRPC status code (a stream counts once, for its whole life).",
            ["method", "code"],
            buckets=LATENCY_BUCKETS + (30.0, 60.0, 300.0),
            registry=registry,
        )
        self.requests = Counter(
            "moderation_requests_total",
            "Moderate calls by policy, overall action and gRPC status code.",
            ["policy", "action", "code"],
            registry=registry,
        )
        self.video_seconds = Counter(
            "moderation_video_seconds",
            "Seconds of video moderated (ModerateVideo answers), by policy.",
            ["policy"],
            registry=registry,
        )
        self.video_frames = Counter(
            "moderation_video_frames",
            "Video frames the decoder produced to reach the sampled ones (kind=decoded) and frames scored (kind=sampled).",
            ["kind"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "moderation_stage_seconds",
            "Latency of each stage of a request (decode, embed, decide, total).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.category_score = Histogram(
            "moderation_category_score",
            "Distribution of category scores, the data thresholds are calibrated from.",
            ["policy", "category"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            "moderation_category_decisions_total",
            "Category outcomes by band (BELOW, BORDERLINE, ABOVE).",
            ["policy", "category", "band"],
            registry=registry,
        )
        self.thresholds = Gauge(
            "moderation_category_threshold",
            "Review and block thresholds of the served policy versions.",
            ["policy", "category", "threshold"],
            registry=registry,
        )
        self.policy_info = Gauge(
            "moderation_policy_info",
            "Served policy versions (value 1) and the model that scores them.",
            ["policy", "version", "model"],
            registry=registry,
        )
        self.model_info = Gauge(
            "moderation_model_info",
            "The CLIP model this server runs; random=\"true\" means its decisions mean nothing.",
            ["model", "random"],
            registry=registry,
        )
        self.module_loaded = Gauge(
            "moderation_python_module_loaded",
            "1 when this process has imported the module (read at scrape time): a server from an exported model folder "
            "(--model-dir) runs without torch, open_clip and transformers, and this shows it.",
            ["module"],
            registry=registry,
        )
        for module in WATCHED_MODULES:
            self.module_loaded.labels(module).set_function(lambda module=module: float(module in sys.modules))
        self.batch_size = Histogram(
            "moderation_batch_size",
            "Images per CLIP forward pass (dynamic micro-batching).",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512),
            registry=registry,
        )
        self.batch_wait_seconds = Histogram(
            "moderation_batch_wait_seconds",
            "Time a request waited in the batch queue before its forward pass started.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge("moderation_queue_depth", "Requests waiting for a CLIP forward pass.", registry=registry)
        self.queue_capacity = Gauge(
            "moderation_queue_capacity", "Bound of the CLIP batch queue; beyond it calls get RESOURCE_EXHAUSTED.", registry=registry
        )
        self.shadow_decisions = Counter(
            "moderation_shadow_decisions_total",
            "Decisions of shadow policies (never returned to callers) by shadow version and action.",
            ["policy", "shadow", "shadow_version", "action"],
            registry=registry,
        )
        self.shadow_disagreements = Counter(
            "moderation_shadow_disagreements_total",
            "Categories where a shadow policy's action differs from the active policy's, by shadow version.",
            ["policy", "shadow", "shadow_version", "category"],
            registry=registry,
        )
        self.escalations = Counter(
            "moderation_escalations_total",
            "Escalations to the explainer by outcome (COMPLETED, TIMED_OUT, SHED, FAILED, DISABLED).",
            ["policy", "outcome"],
            registry=registry,
        )
        self.escalation_seconds = Histogram(
            "moderation_escalation_seconds",
            "Time from escalation to its outcome.",
            ["outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60),
            registry=registry,
        )
        self.escalation_tokens = Histogram(
            "moderation_escalation_generated_tokens",
            "Tokens the explainer generated per completed escalation.",
            buckets=(8, 16, 24, 32, 48, 64, 96, 128, 192, 256),
            registry=registry,
        )
        self.escalation_queue_depth = Gauge(
            "moderation_escalation_queue_depth", "Escalations waiting for a free explainer slot.", registry=registry
        )
        self.tier_agreement = Counter(
            "moderation_tier_agreement_total",
            "Completed escalations by whether the explainer agreed with CLIP's leaning on the cited category.",
            ["policy", "category", "agreement"],
            registry=registry,
        )
        self.signal_seconds = Histogram(
            "moderation_signal_seconds",
            "Time one signal took to turn a request's frames into evidence, per policy judged (shadows included).",
            ["signal"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=registry,
        )
        self.listener_dropped = Counter(
            "moderation_listener_dropped_total",
            "Results a listener never saw because its queue was full (metrics, shadow, embedding_store, thumbnails).",
            ["listener"],
            registry=registry,
        )
        # One count: the request slots admission compares with its limit (serving/admission.py).
        self.in_flight = Gauge(
            "moderation_in_flight_requests",
            "Request slots held: unary calls and stream items being processed; admission refuses beyond the limit.",
            registry=registry,
        )
        self.admission_waiting = Gauge(
            "moderation_admission_waiting_requests",
            "Unary calls and stream items waiting for a request slot (handed out fairly between callers).",
            registry=registry,
        )
        self.in_flight_limit = Gauge(
            "moderation_in_flight_limit",
            "The limit on moderation_in_flight_requests (max_concurrent_requests; explain-serve: running + waiting).",
            registry=registry,
        )
        self.policy_reloads = Counter(
            "moderation_policy_reload_total",
            "Policy (re)loads by result (ok, error).",
            ["result"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "moderation_auth_failures_total",
            "Calls refused for their credentials by reason: UNAUTHENTICATED (missing, malformed, duplicate, invalid) "
            "or PERMISSION_DENIED (wrong_scope: a token of another scope; curation_off: no curation_tokens_file; review_off: no "
            "reviewer_tokens_file).",
            ["reason"],
            registry=registry,
        )
        self.thumbnails_evicted = Counter(
            "moderation_thumbnails_evicted_total",
            "Thumbnails deleted before their retention, oldest first, to keep the kept ones under thumbnail_max_bytes.",
            registry=registry,
        )
        self.thumbnails_bytes = Gauge(
            "moderation_thumbnails_bytes",
            "Bytes of thumbnails kept (files, or rows of the state store), as this server last measured them plus what it "
            "saved since; eviction keeps it under thumbnail_max_bytes.",
            registry=registry,
        )
        self.bank_matches = Counter(
            "moderation_bank_matches_total",
            "Bank entries matched by requests under their active policy, by bank and signal type (pdq, md5, sha256, "
            "embedding); shadows are not counted.",
            ["bank", "signal_type"],
            registry=registry,
        )
        self.bank_entries = Gauge(
            "moderation_bank_entries",
            "Entries in each bank by signal type, as this replica last loaded them from the store.",
            ["bank", "signal_type"],
            registry=registry,
        )
        self.bank_version = Gauge(
            "moderation_bank_version", "The store's bank version this replica's indexes hold (every change increments it).",
            registry=registry,
        )
        self.bank_refresh_age = Gauge(
            "moderation_bank_refresh_age_seconds",
            "Seconds since this replica last read the store's bank version; grows while the store cannot be read "
            "(the last banks keep serving).",
            registry=registry,
        )
        self.bank_refresh_failures = Counter(
            "moderation_bank_refresh_failures_total", "Bank refreshes that failed (the store could not be read).", registry=registry
        )
        self.store_dropped = Counter(
            "moderation_store_dropped_total",
            "Rows the state store dropped because writes kept failing and its bounded buffer was full, by kind "
            "(decision, thumbnail). Requests never fail for it.",
            ["kind"],
            registry=registry,
        )
        self.review_cases_dropped = Counter(
            "moderation_review_cases_dropped_total",
            "REVIEW decisions that opened no case, by reason: queue_full (review_max_open_cases open cases already) or "
            "store (the state store could not take them). The decision itself was answered as usual.",
            ["reason"],
            registry=registry,
        )
        self.review_queue_depth = Gauge(
            "moderation_review_queue_depth", "Open review cases (leased or not), as last read from the state store.", registry=registry
        )
        self.review_leased_cases = Gauge(
            "moderation_review_leased_cases", "Open review cases a reviewer holds a live lease on.", registry=registry
        )
        self.review_oldest_open_age = Gauge(
            "moderation_review_oldest_open_case_age_seconds",
            "Age of the oldest open review case (0 when none); review_max_case_age_days expires it.",
            registry=registry,
        )
        self.review_decisions = Counter(
            "moderation_review_decisions_total",
            "Review decisions by reviewer (a reviewer token's name) and outcome (violates, benign).",
            ["reviewer", "outcome"],
            registry=registry,
        )
        self.review_agreement = Counter(
            "moderation_review_agreement_total",
            "Review decisions by whether the reviewer agreed with a tier. tier=clip: on the case's category, agree when "
            "the reviewer found a violation and CLIP's score was at or above the review threshold, or found none and it was "
            "below. tier=explainer (cases SmolVLM2 judged): agree when the reviewer and SmolVLM2's verdict on the category "
            "it cited both found a violation, or both found none.",
            ["policy", "policy_version", "category", "tier", "agreement"],
            registry=registry,
        )

        self._shadow_lock = threading.Lock()
        self._shadow_series: set[tuple[str, ...]] = set()  # label values of decisions and disagreements series

    def count_shadow_decision(self, policy: str, shadow: str, shadow_version: str, action: str) -> None:
        with self._shadow_lock:
            self._shadow_series.add(("decision", policy, shadow, shadow_version, action))
            self.shadow_decisions.labels(policy, shadow, shadow_version, action).inc()

    def count_shadow_disagreement(self, policy: str, shadow: str, shadow_version: str, category: str) -> None:
        with self._shadow_lock:
            self._shadow_series.add(("disagreement", policy, shadow, shadow_version, category))
            self.shadow_disagreements.labels(policy, shadow, shadow_version, category).inc()

    def publish_policies(self, policies: list[tuple[str, str, list[tuple[str, float, float]]]], model_id: str) -> None:
        """Replace the info and threshold series with the currently served policies; drop shadow series of versions gone."""
        self.policy_info.clear()
        self.thresholds.clear()
        served = {(policy_id, version) for policy_id, version, _ in policies}
        # A request still finishing on the old snapshot may recreate a series just removed;
        # the next publish removes it again, so stale series never outnumber in-flight requests.
        with self._shadow_lock:
            for series in [s for s in self._shadow_series if (s[2], s[3]) not in served]:
                family = self.shadow_decisions if series[0] == "decision" else self.shadow_disagreements
                family.remove(*series[1:])
                self._shadow_series.discard(series)
        for policy_id, version, categories in policies:
            self.policy_info.labels(policy_id, version, model_id).set(1)
            for category_id, review, block in categories:
                self.thresholds.labels(policy_id, category_id, "review").set(review)
                self.thresholds.labels(policy_id, category_id, "block").set(block)
        self._retire_series(
            {policy_id for policy_id, _, _ in policies},
            {(policy_id, category_id) for policy_id, _, categories in policies for category_id, _, _ in categories},
        )

    def _retire_series(self, policy_ids: set[str], categories: set[tuple[str, str]]) -> None:
        """Remove the series of policies and categories no longer served.

        Each edit that renamed 40 categories left ~960 series behind, and a deleted
        policy's stayed for ever (issue 18): series must follow what is served.
        Requests for ids that were never served are counted under 'unknown', which stays.
        """
        for family in (self.category_score, self.decisions, self.tier_agreement):
            # prometheus-client keeps a family's children by their label values, first policy then category.
            for labels in list(family._metrics):  # noqa: SLF001 - the only way to list a family's series
                if (labels[0], labels[1]) not in categories:
                    family.remove(*labels)
        for family in (self.requests, self.escalations):
            for labels in list(family._metrics):  # noqa: SLF001
                if labels[0] not in policy_ids and labels[0] != "unknown":
                    family.remove(*labels)


class WorkerMetrics:
    """The supervisor's own gauges when `serve` runs several worker processes (moderation/serving/workers.py)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = CollectorRegistry() if registry is None else registry
        self.workers = Gauge("moderation_workers", "Server processes this pod runs (setting workers).", registry=self.registry)
        self.serving = Gauge(
            "moderation_workers_serving",
            "Server processes that answered SERVING at the supervisor's last health check; the pod is SERVING only when all do.",
            registry=self.registry,
        )
