"""The supervisor's /metrics: the workers' registries merged into one exposition (moderation/serving/workers.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from moderation.ops.metrics import ModerationMetrics
from moderation.serving.workers import merge_families, worker_settings
from moderation.ops.config import Settings


def _worker(requests: int, in_flight: int, batch_sizes: list[int], bank_version: int) -> list:
    metrics = ModerationMetrics()
    metrics.requests.labels("default", "ALLOW", "OK").inc(requests)
    metrics.in_flight.set(in_flight)
    metrics.in_flight_limit.set(64)
    metrics.model_info.labels("ViT-B-32/random", "true").set(1)
    metrics.thresholds.labels("default", "nudity", "review").set(0.3)
    metrics.bank_version.set(bank_version)
    for size in batch_sizes:
        metrics.batch_size.observe(size)
    return list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))


def _samples(families: list) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_counters_histograms_and_load_gauges_add_up_and_same_everywhere_gauges_do_not() -> None:
    merged = _samples(merge_families([_worker(3, 2, [1, 4], 7), _worker(5, 1, [16], 9)]))
    assert merged[("moderation_requests_total", (("action", "ALLOW"), ("code", "OK"), ("policy", "default")))] == 8
    assert merged[("moderation_in_flight_requests", ())] == 3
    assert merged[("moderation_in_flight_limit", ())] == 128  # each worker admits its own limit
    assert merged[("moderation_batch_size_count", ())] == 3
    assert merged[("moderation_batch_size_sum", ())] == 21
    assert merged[("moderation_batch_size_bucket", (("le", "4.0"),))] == 2
    assert merged[("moderation_model_info", (("model", "ViT-B-32/random"), ("random", "true")))] == 1
    assert merged[("moderation_category_threshold", (("category", "nudity"), ("policy", "default"), ("threshold", "review")))] == 0.3
    assert merged[("moderation_bank_version", ())] == 7  # the stalest worker's view


def test_a_series_only_one_worker_has_is_kept_and_the_result_is_exposable() -> None:
    first, second = _worker(1, 0, [], 1), _worker(0, 0, [], 1)
    metrics = ModerationMetrics()
    metrics.escalations.labels("default", "COMPLETED").inc(2)
    third = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
    families = merge_families([first, second, third])
    assert _samples(families)[("moderation_escalations_total", (("outcome", "COMPLETED"), ("policy", "default")))] == 2

    class Merged:
        def collect(self):  # noqa: ANN201
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged())
    text = generate_latest(registry).decode()
    assert "moderation_requests_total{" in text and "# TYPE moderation_requests_total counter" in text


def test_workers_share_the_cores_unless_threads_are_set() -> None:
    settings = Settings(workers=2, metrics_port=9464, console_port=0)
    first = worker_settings(settings, 0, 50051, 40001, 40002)
    assert (first.workers, first.port, first.metrics_port, first.metrics_bind_host, first.health_port) == (1, 50051, 40001, "127.0.0.1", 40002)
    assert first.decode_workers >= 1 and first.torch_threads is None  # the worker sets torch's threads itself, by device
    assert worker_settings(Settings(workers=2, decode_workers=3), 1, 1, 2, 3).decode_workers == 3
