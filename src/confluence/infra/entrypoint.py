"""Entrypoint of the project's image: ``confluence`` with the container's command.

Batch cannot set a container's entrypoint per job definition, and the controller replaces a
job definition's command with every submission. So a module's job definition on the project
image (``aws.project_image_for_modules``) names the module in ``CONFLUENCE_MODULE`` instead,
and this runs ``confluence module <name>`` with the command the job was given (``-i 0
worklists/.../reaches.json``), exactly as a module image's entrypoint would. Without the
variable it is plain ``confluence`` (``finish-chunk ...``, ``sync ...``, ``module NAME ...``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

#: Set by a module's job definition on the project image (see confluence.infra.template).
ENV_MODULE = "CONFLUENCE_MODULE"


def command(args: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """The ``confluence`` arguments a container with command ``args`` runs."""
    module = environ.get(ENV_MODULE, "")
    # An explicit `module NAME ...` (someone submitting by hand) is taken as it is.
    if module and (not args or args[0] != "module"):
        return ["module", module, *args]
    return list(args)


def main(argv: Sequence[str] | None = None) -> int:
    from confluence import cli

    return cli.main(command(sys.argv[1:] if argv is None else argv, os.environ))


if __name__ == "__main__":
    sys.exit(main())
