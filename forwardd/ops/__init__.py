"""What an operator watches: the HTTP endpoint (``/metrics``, ``/health``, ``/ready``, ``/status``), the
snapshot of live counters it serves, and ``forwardd top``.

Importing this package imports nothing heavy: the hot path uses :mod:`forwardd.ops.counters` only, and the
endpoint (aiohttp, prometheus_client) is loaded when ``http_server`` is configured.
"""
