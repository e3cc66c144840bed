"""Metrics, Prometheus rules and Grafana dashboards, and the checks that run them against live data."""
