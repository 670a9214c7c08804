"""The project's S3 / local sync engine: parallel, incremental, verified (``confluence sync``).

    from confluence.sync import sync, SyncResult
    result = sync("outputs/", "s3://bucket/run-7/outputs", delete=False)
    print(result.summary())

See :mod:`confluence.sync.engine` for how files are compared and verified,
:mod:`confluence.sync.cache` for the local digest cache, :mod:`confluence.sync.listing` for
the streamed listings.
"""

from confluence.sync.command import cli
from confluence.sync.engine import SyncFailure, SyncResult, default_concurrency, sync

__all__ = ["SyncFailure", "SyncResult", "cli", "default_concurrency", "sync"]
