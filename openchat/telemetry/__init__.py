"""Telemetry: JSON logs with the request id (logs.py), Prometheus metrics (metrics.py),
and the per-request token meter (usage.py).

May import: nothing of the project; any layer may import it.
"""
