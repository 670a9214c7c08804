"""Import the legacy orchestrator's confluence.yaml into this project's configuration.

The legacy file names, per stage (= AWS Batch queue), the modules (= job definitions) with
``num_jobs``, ``array_size`` and ``arguments``. Here the queue becomes ``modules.<name>.stage``,
a work-list argument becomes the module's scope plus ``{worklist}``, a run type becomes
``run.run_type`` plus ``{run_type}``, and other arguments are kept. Job counts and array sizes
are not configuration any more: the plan derives them from the domain.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from confluence import config as config_mod

RUN_TYPES = ("constrained", "unconstrained")
NOT_VALID = "the imported configuration does not validate yet"
KNOWN_TOP_LEVEL = ("log_file", "submission_file", "stages")
NOT_NEEDED = {
    "log_file": (
        "not needed: every rule and chunk has its own log under logs/, and AWS Batch jobs log to "
        "CloudWatch"
    ),
    "submission_file": (
        "not needed: the sentinels results/<module>/<unit>.json record every job ID, item "
        "status and output"
    ),
}


def _module_name(name: str) -> str:
    """A legacy job-definition name as a module name (lower case, '_' for '-' and spaces)."""
    return "".join(ch if ch.isalnum() else "_" for ch in str(name).strip().lower())


def _new_module(name: str, stage: str, scope: str) -> dict:
    """A full entry for a module the defaults do not know, from its stage and scope."""
    mounts = [{"filesystem": "input", "subpath": "", "path": "/mnt/data/input"}]
    outputs: list[str] = []
    if stage == config_mod.FLPE_STAGE:
        # Like the other FLPE modules: its own folder of the flpe file system.
        mounts += [
            {"filesystem": "flpe", "subpath": name, "path": "/mnt/data/output"},
            {
                "filesystem": "diagnostics",
                "subpath": "prediagnostics",
                "path": "/mnt/data/prediagnostics",
            },
        ]
        field = {"reach": "reach_id", "set": "set_id", "basin": "reach_id"}.get(scope)
        if field:
            outputs = [f"/mnt/data/output/{{{field}}}_{name}.nc"]
    return {
        "stage": stage,
        "scope": scope,
        "worklist": config_mod.SCOPE_WORKLIST[scope],
        "image": f"confluence-{name}:latest",
        "mounts": mounts,
        "outputs": outputs,
    }


def import_legacy(legacy: dict, defaults: dict | None = None) -> tuple[dict, list[str]]:
    """A configuration fragment (to merge over the defaults) and what could not be mapped.

    ``defaults`` is the configuration the fragment will be merged over (config/config.yaml
    when omitted); it tells which modules are known.
    """
    if defaults is None:
        defaults = config_mod.validate(config_mod.read_yaml(config_mod._default_config_path()))
    notes: list[str] = []
    if not isinstance(legacy, dict):
        raise ValueError("the legacy file must be a mapping with a 'stages' key")
    for key, value in legacy.items():
        if key in NOT_NEEDED:
            notes.append(f"{key}: {value!r} {NOT_NEEDED[key]}")
        elif key not in KNOWN_TOP_LEVEL:
            notes.append(f"{key}: unknown key of the legacy file, ignored")
    stages = legacy.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise ValueError("the legacy file has no 'stages' mapping (stage -> module -> settings)")

    known = defaults["modules"]
    modules: dict[str, dict] = {}
    run_type: str | None = None
    flpe_order: list[str] = []
    for stage, stage_modules in stages.items():
        if not isinstance(stage_modules, dict):
            notes.append(f"stages.{stage}: not a mapping of modules, ignored")
            continue
        for legacy_name, settings in stage_modules.items():
            where = f"stages.{stage}.{legacy_name}"
            name = _module_name(legacy_name)
            if name != legacy_name:
                notes.append(f"{where}: renamed to module {name!r} (names are lower case, '_')")
            settings = settings or {}
            if not isinstance(settings, dict):
                notes.append(f"{where}: settings are not a mapping, ignored")
                settings = {}
            entry: dict = {"stage": str(stage)}
            scope = None
            arguments: list[str] = []
            for arg in settings.get("arguments") or []:
                arg = str(arg)
                if arg in config_mod.WORKLIST_SCOPE and scope is None:
                    scope = config_mod.WORKLIST_SCOPE[arg]
                    arguments.append("{worklist}")
                elif arg in RUN_TYPES:
                    if run_type is None:
                        run_type = arg
                    if arg == run_type:
                        arguments.append("{run_type}")
                    else:
                        arguments.append(arg)
                        notes.append(
                            f"{where}.arguments: run type {arg!r} differs from {run_type!r} "
                            "(set as run.run_type); kept as a fixed argument"
                        )
                else:
                    arguments.append(arg)
            sizes = [f"{k} {settings[k]!r}" for k in ("num_jobs", "array_size") if k in settings]
            for key in sorted(set(settings) - {"num_jobs", "array_size", "arguments"}):
                notes.append(f"{where}.{key}: unknown setting, ignored")

            base = known.get(name)
            if scope is None:
                scope = base["scope"] if base else "reach"
                notes.append(
                    f"{where}: no work-list argument; scope {scope} "
                    + ("kept from the defaults" if base else "assumed")
                    + ", and {worklist} added as the first argument, because every job (chunk or "
                    "continent) has its own work list (the image must accept it)"
                )
                arguments.insert(0, "{worklist}")
            if sizes:
                per = "continent" if scope == "continent" else "chunk"
                notes.append(
                    f"{where}: {', '.join(sizes)} not needed: the plan sizes the jobs (scope "
                    f"{scope}: one job per {per}, one array child per item of its {per})"
                )
            entry["scope"] = scope
            entry["worklist"] = config_mod.SCOPE_WORKLIST[scope]
            entry["arguments"] = arguments
            if base is None:
                entry = {**_new_module(name, str(stage), scope), **entry}
                notes.append(
                    f"{where}: not a module of the defaults; added with image "
                    f"{entry['image']}, mounts "
                    f"{', '.join(m['filesystem'] + ':' + m['path'] for m in entry['mounts'])}, "
                    f"outputs {entry['outputs'] or 'none'} and default resources: check them"
                )
            elif base["scope"] != scope:
                # The defaults' output patterns use the other scope's placeholders.
                entry["outputs"] = []
                notes.append(
                    f"{where}: scope {scope} differs from the defaults' {base['scope']}; its "
                    f"outputs are not known, so none are checked (set modules.{name}.outputs)"
                )
            if name in modules:
                notes.append(f"{where}: module {name!r} appears twice; the later entry wins")
            modules[name] = entry
            if str(stage) == config_mod.FLPE_STAGE and name not in flpe_order:
                flpe_order.append(name)

    for name in known:
        if name not in modules:
            notes.append(
                f"modules.{name}: not in the legacy file; kept from the defaults (a workflow "
                "stage needs it)"
            )

    fragment: dict = {}
    if run_type:
        fragment["run"] = {"run_type": run_type}
    merged_stage = {n: m["stage"] for n, m in known.items()}
    merged_stage.update({n: m["stage"] for n, m in modules.items()})
    if flpe_order:
        algorithms = flpe_order
    else:
        algorithms = [a for a in defaults["flpe"]["algorithms"] if merged_stage.get(a) == "flpe"]
    if algorithms != list(defaults["flpe"]["algorithms"]):
        fragment["flpe"] = {"algorithms": algorithms}
    fragment["modules"] = modules

    try:
        config_mod.validate(config_mod.merge(defaults, fragment))
    except config_mod.ConfigError as err:
        notes.append(f"{NOT_VALID}:\n{err}")
    return fragment, notes


def render(fragment: dict, notes: list[str], source: str) -> str:
    """The fragment as YAML, headed by what could not be mapped."""
    header = [
        f"# Imported from the legacy orchestrator's {source} by `confluence import-legacy`.",
        "# Merge it over the defaults: snakemake --configfile THIS_FILE, or",
        "# confluence plan --configfile THIS_FILE.",
    ]
    if notes:
        header.append("# Not mapped, or mapped with assumptions:")
        for note in notes:
            header.extend(f"#   {line}" for line in f"- {note}".splitlines())
    return "\n".join(header) + "\n" + yaml.safe_dump(fragment, sort_keys=False, width=100)


def cli(args) -> int:
    """``confluence import-legacy confluence.yaml -o FILE``."""
    try:
        with open(args.legacy) as f:
            legacy = yaml.safe_load(f)
        fragment, notes = import_legacy(legacy)
    except FileNotFoundError:
        print(f"confluence import-legacy: {args.legacy} does not exist", file=sys.stderr)
        return 2
    except (yaml.YAMLError, ValueError) as err:
        print(f"confluence import-legacy: {args.legacy}: {err}", file=sys.stderr)
        return 2
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(fragment, notes, Path(args.legacy).name))
    for note in notes:
        print(f"- {note}")
    invalid = any(n.startswith(NOT_VALID) for n in notes)
    print(
        f"wrote {output} ({len(fragment['modules'])} modules); {len(notes)} notes above"
        + ("; it does NOT validate yet, fix the keys named above" if invalid else "")
    )
    return 1 if invalid else 0
