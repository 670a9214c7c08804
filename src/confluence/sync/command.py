"""``confluence sync SRC DST``: the command-line face of :func:`confluence.sync.sync`.

Output: with ``--dry-run``, one line per planned action on stdout ("copy SRC -> DST (N
bytes)", "delete DST"); on stderr a progress bar (interactive terminals only), each failure,
and one summary line. Exit status 0 when everything synced, 1 when any file failed, 2 for
unusable arguments, 130 when interrupted.
"""

from __future__ import annotations

import json
import signal
import sys
import threading


def read_file_list(path: str) -> list[str]:
    """Relative paths from a file list: one per line (blank lines and ``#`` comments
    skipped), or JSON: a list of paths or of objects with a "path", or an object with such
    a list under "files" (as ``--manifest`` writes); "-" reads stdin."""
    if path == "-":
        text = sys.stdin.read()
    else:
        with open(path) as handle:
            text = handle.read()
    if text.lstrip().startswith(("[", "{")):
        try:
            items = json.loads(text)
        except ValueError as err:
            raise ValueError(f"--files-from {path}: not valid JSON: {err}") from None
        if isinstance(items, dict):
            items = items.get("files")
            if not isinstance(items, list):
                raise ValueError(f"--files-from {path}: a JSON object needs a 'files' list")
        paths = []
        for item in items:
            if isinstance(item, dict) and "path" in item:
                paths.append(str(item["path"]))
            elif isinstance(item, str):
                paths.append(item)
            else:
                raise ValueError(
                    f"--files-from {path}: JSON entries must be paths or objects with a "
                    f"'path', got {item!r}"
                )
        return paths
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cli(args) -> int:
    from confluence.sync.engine import sync
    from confluence.sync.progress import ProgressBar

    try:
        files = read_file_list(args.files_from) if args.files_from else None
    except (OSError, ValueError) as err:
        print(f"confluence sync: cannot read the file list: {err}", file=sys.stderr)
        return 2
    # SIGTERM (a batch scheduler stopping the job) unwinds like Ctrl-C: in-flight multipart
    # uploads are aborted and temporary files removed.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    bar = None if args.dry_run else ProgressBar.if_interactive(sys.stderr)
    try:
        result = sync(
            args.source,
            args.destination,
            delete=args.delete,
            dry_run=args.dry_run,
            rules=list(args.filters or []),
            concurrency=args.concurrency,
            files=files,
            manifest=args.manifest,
            progress=bar,
        )
    except ValueError as err:
        print(f"confluence sync: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print(
            "confluence sync: interrupted; nothing partial is visible. Rerun the same command "
            "to finish (files already in place are skipped).",
            file=sys.stderr,
        )
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if bar is not None:
        bar.close()
    if args.dry_run:
        for entry in result.entries:
            if entry["action"] == "copy":
                print(f"copy {entry['source']} -> {entry['destination']} ({entry['size']} bytes)")
            elif entry["action"] == "delete":
                print(f"delete {entry['destination']}")
    for path, reason in result.failed:
        print(f"confluence sync: failed: {path}: {reason}", file=sys.stderr)
    print(result.summary(), file=sys.stderr)
    return 0 if result.ok else 1
