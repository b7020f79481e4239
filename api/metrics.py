"""Prometheus metrics, one registry per app so that several apps can live in one process."""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    """Requests, errors, request latency per route, explain latency per saliency method, and batching."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("saliency_http_requests", "HTTP requests handled.",
                                ("route", "status"), registry=self.registry)
        self.errors = Counter("saliency_http_errors", "Requests answered with an error, by error code.",
                              ("route", "error"), registry=self.registry)
        self.latency = Histogram("saliency_http_request_seconds", "Time to answer a request.",
                                 ("route",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.method_latency = Histogram("saliency_explain_method_seconds",
                                        "Backward-pass time of one saliency method for one batch.",
                                        ("method",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("saliency_images_explained", "Images explained.", registry=self.registry)
        self.batch_size = Histogram("saliency_batch_size", "Images explained together in one model call.",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram("saliency_queue_wait_seconds",
                                    "Time a request waited in its worker's queue for the model.",
                                    buckets=WAIT_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("saliency_queue_depth", "Requests waiting for the model in this worker now.",
                                 registry=self.registry)

    def install(self, app: Flask) -> None:
        """Time every request and count its outcome."""

        @app.before_request
        def _start_timer() -> None:
            g.metrics_start = time.perf_counter()

        @app.after_request
        def _record(response: Response) -> Response:
            route = request.url_rule.rule if request.url_rule else "unmatched"
            self.requests.labels(route, str(response.status_code)).inc()
            start = g.get("metrics_start")
            if start is not None:
                self.latency.labels(route).observe(time.perf_counter() - start)
            if response.status_code >= 400 and response.is_json:
                code = (response.get_json(silent=True) or {}).get("error", "unknown")
                self.errors.labels(route, str(code)).inc()
            return response

    def observe_explanation(self, seconds: dict[str, float], images: int) -> None:
        for method, s in seconds.items():
            if method != "forward":
                self.method_latency.labels(method).observe(s)
        self.images.inc(images)

    def observe_batch(self, images: int, waits: list[float]) -> None:
        """One model call: how many images it explained, and how long each of its requests waited."""
        self.batch_size.observe(images)
        for seconds in waits:
            self.queue_wait.observe(seconds)

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)
