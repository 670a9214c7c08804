"""Reference modules: thin I/O wrappers over confluence.science that follow the container contract.

Each module file defines ``run(worklist, index, root, extra)``:

- ``worklist``: the work-list file name relative to the module's input mount
  (e.g. ``worklists/eu_2101-2103/reaches.json``);
- ``index``: the zero-based item index (already resolved from ``-i`` or the environment);
- ``root``: the mount root (``/mnt/data`` in a container, ``CONFLUENCE_MOUNT_ROOT`` locally);
- ``extra``: the module's further arguments (strings).

It writes its outputs under ``root`` with ``contract.atomic_output`` and raises
``contract.ItemError`` (or ``UpstreamMissing``) with a message naming the item and the reason.
"""

#: Module name -> "module path:function". FLPE algorithms share one implementation.
FLPE_ALGORITHMS = ("geobam", "hivdi", "metroman", "momma", "sad", "sic4dvar")

REGISTRY = {
    "input": "confluence.modules.input:run",
    "priors": "confluence.modules.priors:run",
    "prediagnostics": "confluence.modules.prediagnostics:run",
    **{algo: "confluence.modules.flpe:run_" + algo for algo in FLPE_ALGORITHMS},
    "postdiagnostics_flpe": "confluence.modules.postdiagnostics_flpe:run",
    "moi": "confluence.modules.moi:run",
    "postdiagnostics_moi": "confluence.modules.postdiagnostics_moi:run",
    "offline": "confluence.modules.offline:run",
    "validation": "confluence.modules.validation:run",
    "output": "confluence.modules.output:run",
}
