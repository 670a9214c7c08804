"""Local stand-ins for AWS pieces, for tests and benchmarks on one machine (loopback only).

- ``confluence.emulator.proxy``: a reverse proxy in front of an emulated endpoint (a moto
  server) that adds a real S3's per-request latency, counts requests by method, and injects
  throttling answers and corrupted downloads on demand.
- ``confluence.emulator.server`` (``confluence emulator``): moto's AWS on 127.0.0.1 whose
  Batch jobs run as local processes (``confluence.emulator.batch``), with the configuration's
  account prepared (``confluence.emulator.account``), a request log and fault injection.

Submodules are imported explicitly; this package imports nothing on its own.
"""
