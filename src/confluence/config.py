"""The workflow configuration: loading, defaults, validation with errors that name the key.

``load()`` reads config/config.yaml (the November 2021 deployment on a small synthetic
domain) and merges later files over it, as Snakemake merges ``--configfile`` over the
Snakefile's ``configfile:``. ``validate()`` fills defaults from config/config.schema.yaml,
checks the schema, then checks what a schema cannot say: Fargate vCPU/memory pairs, mounts,
output patterns, scope/work-list pairs and the FLPE algorithm list.
"""

from __future__ import annotations

import copy
import datetime
import os
import re
import string
from functools import lru_cache
from pathlib import Path, PurePosixPath

import yaml

from confluence import contract

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = Path("config/config.yaml")
SCHEMA_PATH = PROJECT_ROOT / "config" / "config.schema.yaml"

SCOPE_WORKLIST = {
    "reach": "reaches.json",
    "set": "sets.json",
    "basin": "basin.json",
    "continent": "continent.json",
}
WORKLIST_SCOPE = {v: k for k, v in SCOPE_WORKLIST.items()}
#: Placeholders an output pattern may use, per scope (the runner fills them per item).
OUTPUT_PLACEHOLDERS = {
    "reach": {"reach_id"},
    "set": {"set_id"},
    "basin": {"reach_id", "basin_id"},
    "continent": {"continent"},
}
ARGUMENT_PLACEHOLDERS = {"worklist", "run_type", "unit"}
FLPE_STAGE = "flpe"

#: Fargate task sizes: vCPU -> (lowest MiB, highest MiB, step MiB).
FARGATE_MEMORY = {
    0.25: (512, 2048, None),
    0.5: (1024, 4096, 1024),
    1: (2048, 8192, 1024),
    2: (4096, 16384, 1024),
    4: (8192, 30720, 1024),
    8: (16384, 61440, 4096),
    16: (32768, 122880, 8192),
}
FARGATE_QUARTER_VCPU_MEMORY = (512, 1024, 2048)


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key path and what is allowed."""


# --- loading ----------------------------------------------------------------------------


def _default_config_path() -> Path:
    """config/config.yaml of the working directory, else of the project checkout."""
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else PROJECT_ROOT / DEFAULT_CONFIG


def merge(base: dict, override: dict) -> dict:
    """``override`` merged into a copy of ``base``: dicts recursively, anything else replaced."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def read_yaml(path: str | Path) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys")
    return data


def load(
    paths: list[str] | None = None, overrides: dict | None = None, *, base: bool = True
) -> dict:
    """Read, merge and validate configuration files.

    The default config/config.yaml comes first (unless ``base`` is false or it is listed
    anyway), then ``paths`` in order, then ``overrides``; later values win, recursively.
    """
    default = _default_config_path()
    files = [Path(p) for p in (paths or [])]
    if base and not any(_same_file(p, default) for p in files):
        files.insert(0, default)
    config: dict = {}
    for path in files:
        config = merge(config, read_yaml(path))
    if overrides:
        config = merge(config, overrides)
    return validate(config)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


# --- schema, defaults -------------------------------------------------------------------


@lru_cache(maxsize=1)
def schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _resolve(node: dict, root: dict) -> dict:
    ref = node.get("$ref")
    if ref is None:
        return node
    target = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def fill_defaults(value, node: dict, root: dict | None = None):
    """A copy of ``value`` with the schema's defaults filled in, recursively."""
    root = root if root is not None else node
    node = _resolve(node, root)
    if isinstance(value, dict) and node.get("type", "object") == "object":
        result = dict(value)
        properties = node.get("properties", {})
        for key, sub in properties.items():
            sub = _resolve(sub, root)
            if key not in result and "default" in sub:
                result[key] = copy.deepcopy(sub["default"])
        for key in list(result):
            if key in properties:
                result[key] = fill_defaults(result[key], properties[key], root)
            elif isinstance(node.get("additionalProperties"), dict):
                result[key] = fill_defaults(result[key], node["additionalProperties"], root)
        return result
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [fill_defaults(item, node["items"], root) for item in value]
    return value


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _format_schema_error(error) -> str:
    """One line per problem: the key path, the bad value, what is allowed."""
    path = list(error.absolute_path)
    value, rule, schema_node = error.instance, error.validator, error.schema
    key = _key(path)
    if rule == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value)
        if "propertyNames" in error.absolute_schema_path:
            return f"config key {key}: key {value!r} is not allowed; allowed keys: {allowed}"
        return f"config key {key}: {value!r} is not allowed; allowed values: {allowed}"
    if rule in ("maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum"):
        words = {
            "maximum": "above the maximum",
            "minimum": "below the minimum",
            "exclusiveMaximum": "not below the limit",
            "exclusiveMinimum": "not above the limit",
        }[rule]
        reason = schema_node.get("x-limit-reason")
        return f"config key {key}: {value!r} is {words} {error.validator_value}" + (
            f" ({reason})" if reason else ""
        )
    if rule == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"config key {key}: {value!r} is not of type {expected}"
    if rule == "additionalProperties":
        known = sorted(schema_node.get("properties", {}))
        extra = sorted(set(value) - set(known)) if isinstance(value, dict) else []
        allowed = ", ".join(known)
        if len(extra) == 1:
            return f"config key {_key([*path, extra[0]])}: unknown key; allowed keys: {allowed}"
        return f"config key {key}: unknown keys {', '.join(extra)}; allowed keys: {allowed}"
    if rule == "required":
        missing = [k for k in error.validator_value if k not in value]
        described = schema_node.get("properties", {}).get(missing[0], {}).get("description", "")
        return f"config key {_key([*path, missing[0]])} is missing" + (
            f": {described}" if described else ""
        )
    if rule == "pattern":
        if "propertyNames" in error.absolute_schema_path:
            return (
                f"config key {key}: key {value!r} must match {error.validator_value} "
                "(lower-case letters, digits and '_', starting with a letter)"
            )
        help_text = schema_node.get("x-pattern-help")
        return f"config key {key}: {value!r} does not match the pattern {error.validator_value}" + (
            f" ({help_text})" if help_text else ""
        )
    if rule == "minItems":
        return f"config key {key}: {value!r} has too few items (at least {error.validator_value})"
    if rule == "maxItems":
        return f"config key {key}: {value!r} has too many items (at most {error.validator_value})"
    if rule == "uniqueItems":
        return f"config key {key}: {value!r} lists an item twice"
    return f"config key {key}: {error.message}"


def _schema_errors(config: dict) -> list[str]:
    import jsonschema  # imported here: jsonschema is slow to import and only validation needs it

    validator_class = jsonschema.validators.validator_for(schema())
    validator = validator_class(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    return [_format_schema_error(e) for e in errors]


# --- semantic checks --------------------------------------------------------------------


def fargate_memory_options(vcpu: float) -> str:
    """The Fargate memory sizes allowed with ``vcpu``, for error messages."""
    if vcpu == 0.25:
        return ", ".join(str(m) for m in FARGATE_QUARTER_VCPU_MEMORY)
    low, high, step = FARGATE_MEMORY[vcpu]
    return f"{low}-{high} in steps of {step}"


def fargate_pair_valid(vcpu: float, memory_mib: int) -> bool:
    if vcpu == 0.25:
        return memory_mib in FARGATE_QUARTER_VCPU_MEMORY
    if vcpu not in FARGATE_MEMORY:
        return False
    low, high, step = FARGATE_MEMORY[vcpu]
    return low <= memory_mib <= high and (memory_mib - low) % step == 0


def _placeholders(template: str) -> list[str]:
    """Field names in a str.format template; raises ValueError on unbalanced braces."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _under(path: PurePosixPath, mount: PurePosixPath) -> bool:
    return path == mount or mount in path.parents


def _module_problems(name: str, module: dict, filesystems: list[str]) -> list[str]:
    key = f"modules.{name}"
    problems = []
    scope, worklist = module["scope"], module["worklist"]
    if SCOPE_WORKLIST[scope] != worklist:
        problems.append(
            f"config key {key}.worklist: {worklist!r} does not match scope {scope!r}; a {scope} "
            f"module reads {SCOPE_WORKLIST[scope]}"
        )
    vcpu, memory = module["vcpu"], module["memory_mib"]
    if module["platform"] == "FARGATE" and not fargate_pair_valid(vcpu, memory):
        problems.append(
            f"config key {key}.memory_mib: {memory} is not a Fargate size for vcpu {vcpu}; "
            f"allowed values: {fargate_memory_options(vcpu)} (or set platform: EC2)"
        )
    if module["platform"] == "EC2" and vcpu != int(vcpu):
        problems.append(
            f"config key {key}.vcpu: {vcpu} is not allowed on EC2; allowed values: whole vCPUs "
            "(1, 2, 4, 8, 16)"
        )

    mount_paths: list[PurePosixPath] = []
    root = PurePosixPath(contract.DEFAULT_MOUNT_ROOT)
    for i, mount in enumerate(module["mounts"]):
        mkey = f"{key}.mounts.{i}"
        if mount["filesystem"] not in filesystems:
            problems.append(
                f"config key {mkey}.filesystem: {mount['filesystem']!r} is not a known file "
                f"system; allowed values: {', '.join(filesystems)} (see filesystems)"
            )
        path = PurePosixPath(mount["path"])
        if ".." in path.parts or str(path) != mount["path"].rstrip("/") or not path.is_absolute():
            problems.append(
                f"config key {mkey}.path: {mount['path']!r} is not a normalised absolute "
                "container path (e.g. /mnt/data/input)"
            )
        for j, other in enumerate(mount_paths):
            if path == other:
                problems.append(
                    f"config key {mkey}.path: {mount['path']} is already the path of "
                    f"{key}.mounts.{j}"
                )
            elif _under(path, other) or _under(other, path):
                outer, inner = (other, path) if _under(path, other) else (path, other)
                if outer == root and len(module["mounts"]) == 1:
                    continue
                problems.append(
                    f"config key {mkey}.path: {inner} would be nested inside the mount {outer}; "
                    f"mounts may not nest (a mount at {root} must be the module's only mount)"
                )
        mount_paths.append(path)

    allowed_args = ARGUMENT_PLACEHOLDERS
    for i, arg in enumerate(module["arguments"]):
        try:
            names = _placeholders(arg)
        except ValueError as err:
            problems.append(f"config key {key}.arguments.{i}: {arg!r} is not a template: {err}")
            continue
        bad = [n for n in names if n not in allowed_args]
        if bad:
            problems.append(
                f"config key {key}.arguments.{i}: placeholder {{{bad[0]}}} is not allowed; "
                f"allowed placeholders: {', '.join('{' + n + '}' for n in sorted(allowed_args))}"
            )

    allowed_fields = OUTPUT_PLACEHOLDERS[scope]
    for i, pattern in enumerate(module["outputs"]):
        okey = f"{key}.outputs.{i}"
        try:
            names = _placeholders(pattern)
        except ValueError as err:
            problems.append(f"config key {okey}: {pattern!r} is not a template: {err}")
            continue
        bad = [n for n in names if n not in allowed_fields]
        if bad:
            problems.append(
                f"config key {okey}: placeholder {{{bad[0]}}} is not allowed for scope {scope}; "
                f"allowed placeholders: {', '.join('{' + n + '}' for n in sorted(allowed_fields))}"
            )
        path = PurePosixPath(pattern)
        if not path.is_absolute():
            problems.append(f"config key {okey}: {pattern!r} is not an absolute container path")
        elif not any(_under(path, m) and path != m for m in mount_paths):
            problems.append(
                f"config key {okey}: {pattern!r} is not under any of the module's mounts "
                f"({', '.join(str(m) for m in mount_paths) or 'none'})"
            )
    return problems


def _derive_module_keys(name: str, module) -> dict:
    """Keys whose default depends on the module: stage, image, scope <-> worklist."""
    if not isinstance(module, dict):
        return module
    module = dict(module)
    module.setdefault("stage", name)
    module.setdefault("queue", module["stage"])
    module.setdefault("job_definition", name)
    module.setdefault("image", f"confluence-{name}:latest")
    scope, worklist = module.get("scope"), module.get("worklist")
    if scope is None and worklist in WORKLIST_SCOPE:
        module["scope"] = WORKLIST_SCOPE[worklist]
    elif scope is None and worklist is None:
        module["scope"] = "reach"
    if worklist is None and module.get("scope") in SCOPE_WORKLIST:
        module["worklist"] = SCOPE_WORKLIST[module["scope"]]
    return module


def _domain_problems(domain: dict) -> list[str]:
    problems = []
    try:
        datetime.date.fromisoformat(domain["start"])
    except ValueError:
        problems.append(
            f"config key domain.start: {domain['start']!r} is not a date; use YYYY-MM-DD"
        )
    for code, entry in domain["continents"].items():
        lo, hi = entry["reaches_per_basin"]
        if lo > hi:
            problems.append(
                f"config key domain.continents.{code}.reaches_per_basin: [{lo}, {hi}]: the "
                "minimum is above the maximum"
            )
        most = 999 * len(contract.CONTINENTS[code])
        if entry["basins"] > most:
            problems.append(
                f"config key domain.continents.{code}.basins: {entry['basins']} is above the "
                f"maximum {most} (4-digit basin IDs starting with {contract.CONTINENTS[code]})"
            )
    if domain["kind"] == "synthetic" and not domain["continents"]:
        problems.append(
            "config key domain.continents: empty; a synthetic domain needs at least one continent"
        )
    return problems


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_environment(value, path=(), problems=None):
    """``${NAME}`` and ``${NAME:-default}`` in string values, from the environment, so a
    profile keeps account-specific values (bucket, Region, prefix) out of its files."""
    if isinstance(value, dict):
        return {k: expand_environment(v, (*path, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_environment(v, (*path, i), problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match):
        name, default = match.group(1), match.group(2)
        if name in os.environ and os.environ[name] != "":
            return os.environ[name]
        if default is not None:
            return default
        if problems is not None:
            problems.append(
                f"config key {_key(path)}: environment variable {name} is not set; export it "
                f"(e.g. export {name}=...) or give a default as ${{{name}:-value}}"
            )
        return match.group(0)

    return _ENV_REFERENCE.sub(substitute, value)


def validate(config: dict) -> dict:
    """The configuration with defaults filled in; raises ConfigError listing every problem."""
    if not isinstance(config, dict):
        raise ConfigError("the configuration must be a mapping of keys")
    problems: list[str] = []
    config = expand_environment(copy.deepcopy(config), problems=problems)
    if problems:
        raise ConfigError("\n".join(problems))
    if isinstance(config.get("modules"), dict):
        config["modules"] = {
            name: _derive_module_keys(name, module) for name, module in config["modules"].items()
        }
        flpe = config.setdefault("flpe", {})
        if isinstance(flpe, dict) and "algorithms" not in flpe:
            flpe["algorithms"] = [
                name
                for name, module in config["modules"].items()
                if isinstance(module, dict) and module.get("stage") == FLPE_STAGE
            ]
    config = fill_defaults(config, schema())
    if "modules" not in config:
        raise ConfigError(
            "config key modules is missing: name the modules to run (config/config.yaml holds "
            "the 2021 deployment; merge your file over it)"
        )
    problems = _schema_errors(config)
    if problems:
        raise ConfigError("\n".join(problems))

    run, modules = config["run"], config["modules"]
    if run["max_set_size"] > run["chunk_size"]:
        problems.append(
            f"config key run.max_set_size: {run['max_set_size']} is above run.chunk_size "
            f"{run['chunk_size']}; an inversion set must fit in one chunk"
        )
    problems += _domain_problems(config["domain"])
    if config["domain"]["kind"] == "synthetic" and config["storage"]["inputs"].startswith("s3://"):
        problems.append(
            f"config key storage.inputs: {config['storage']['inputs']!r} is an S3 URL, but the "
            "synthetic domain is generated into a local folder; use a local folder, or upload "
            "the generated inputs with `confluence sync` and set domain.kind: sword"
        )
    flpe_modules = [n for n, m in modules.items() if m["stage"] == FLPE_STAGE]
    for i, algo in enumerate(config["flpe"]["algorithms"]):
        if algo not in modules:
            problems.append(
                f"config key flpe.algorithms.{i}: {algo!r} is not a module; allowed values: "
                f"{', '.join(flpe_modules) or '(no module has stage flpe)'}"
            )
        elif modules[algo]["stage"] != FLPE_STAGE:
            problems.append(
                f"config key flpe.algorithms.{i}: module {algo!r} has stage "
                f"{modules[algo]['stage']!r}, not {FLPE_STAGE}; allowed values: "
                f"{', '.join(flpe_modules) or '(none)'}"
            )
    for name, module in modules.items():
        problems += _module_problems(name, module, config["filesystems"])
    if problems:
        raise ConfigError("\n".join(problems))
    return config


# --- accessors for the rules --------------------------------------------------------------


def module_names_by_stage(config: dict) -> dict[str, list[str]]:
    """Stage (queue) -> module names, both in configuration order."""
    stages: dict[str, list[str]] = {}
    for name, module in config["modules"].items():
        stages.setdefault(module.get("stage", name), []).append(name)
    return stages


def modules_of_scope(config: dict, scope: str) -> list[str]:
    return [n for n, m in config["modules"].items() if m.get("scope") == scope]
