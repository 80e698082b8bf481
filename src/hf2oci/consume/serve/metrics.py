"""serve's Prometheus metrics: requests by route, method and status, bytes sent, downloads in
flight, latency, requests by client family, and the store's own counts (registry retries by
kind, stale answers)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from hf2oci.consume.serve.store import Store
from hf2oci.consume.serve.xet import xet_route

#: paths answered without a token (health and metrics for probes, the login form's)
OPEN = ("/health", "/metrics", "/-/hf2oci.css", "/-/login")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hf2oci_serve_requests", "Requests answered", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.bytes = Counter("hf2oci_serve_bytes", "File bytes sent", registry=self.registry)
        self.upstream_errors = Counter(
            "hf2oci_serve_upstream_errors", "Registry or layout reads that failed",
            registry=self.registry,
        )  # fmt: skip
        self.downloads = Gauge(
            "hf2oci_serve_downloads", "File downloads in flight", registry=self.registry
        )
        self.latency = Histogram(
            "hf2oci_serve_request_seconds", "Time to the response's start", ["route"],
            registry=self.registry,
        )  # fmt: skip
        self.clients = Counter(
            "hf2oci_serve_client_requests", "Requests by client family (from the User-Agent: "
            "llama.cpp, huggingface_hub, hf-hub-rust, huggingface.js, transformers.js, hf_xet, "
            "python-urllib, node, browser, other)", ["client"], registry=self.registry,
        )  # fmt: skip

    def seen(self, user_agent: bytes) -> None:
        """Count a request by the family of its client."""
        self.clients.labels(client_family(user_agent.decode("latin-1"))).inc()


class StoreCounts:
    """The store's counts as metrics: retries of registry reads, and stale answers."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self.store.counts.snapshot()
        yield CounterMetricFamily("hf2oci_serve_upstream_retries",
                                  "Registry reads tried again within a request's budget",
                                  value=counts.get("retries", 0))  # fmt: skip
        faults = CounterMetricFamily("hf2oci_serve_upstream_faults",
                                     "Registry reads that failed, by kind (tried again, or "
                                     "the last try, given up on)",
                                     labels=["kind"])  # fmt: skip
        for key, n in sorted(counts.items()):
            if key.startswith("fault:"):
                faults.add_metric([key.removeprefix("fault:")], n)
        yield faults
        yield CounterMetricFamily("hf2oci_serve_stale_answers",
                                  "Metadata answered from the cache while the registry failed",
                                  value=counts.get("stale", 0))  # fmt: skip


def route_of(path: str) -> str:
    if path in OPEN or path == "/api/agent-harnesses":
        return path
    xet = xet_route(path)
    if xet is not None:
        return xet
    if path.startswith("/api/"):
        return "refs" if path.endswith("/refs") else "api"
    if "/resolve/" in path:
        return "resolve"
    if "/raw/" in path:
        return "raw"
    if path.startswith("/v2/") and "/manifests/" in path:
        return "gguf-manifest"
    return "page"


#: the client families ``/metrics`` counts requests of, from the User-Agent (a fixed set: a
#: label per distinct User-Agent would grow without bound)
_FAMILIES = (
    ("llama-cpp", "llama.cpp"),
    ("hf_hub/", "huggingface_hub"),
    ("hf-hub/", "hf-hub-rust"),
    ("huggingface.js", "huggingface.js"),
    ("transformers.js", "transformers.js"),
    ("hf_xet", "hf_xet"),
    ("python-urllib", "python-urllib"),
    ("node", "node"),
    ("mozilla", "browser"),
)


def client_family(user_agent: str) -> str:
    """Which client sent a request, by its User-Agent: one of a few families, else ``other``."""
    agent = user_agent.lower()
    for marker, family in _FAMILIES:
        if marker in agent:
            return family
    return "other"
