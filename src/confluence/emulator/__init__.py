"""Local stand-ins for AWS pieces, for tests and benchmarks on one machine (loopback only).

- ``confluence.emulator.proxy``: a reverse proxy in front of an emulated endpoint (a moto
  server) that adds a real S3's per-request latency, counts requests by method, and injects
  throttling answers and corrupted downloads on demand.

Submodules are imported explicitly; this package imports nothing on its own.
"""
