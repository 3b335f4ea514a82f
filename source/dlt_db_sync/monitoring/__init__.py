"""Observability: run status, health document, Prometheus metrics, the HTTP server, status page and watchdogs."""
