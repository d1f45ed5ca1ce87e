"""The observers of a request: metrics, logs, traces, and data capture.

- :mod:`.metrics`: Prometheus counters and histograms, shared by the workers;
- :mod:`.logs`: log records and the access line (text or JSON);
- :mod:`.tracing` and :mod:`.otel`: OpenTelemetry spans, off at no cost;
- :mod:`.capture`: sampled requests and answers written off the request path.
"""
