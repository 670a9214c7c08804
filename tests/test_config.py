"""The configuration: schema, defaults, semantic checks and their error messages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from confluence import config as config_mod
from confluence.batch import names
from confluence.config import ConfigError, load, validate

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT = config_mod.read_yaml(PROJECT / "config" / "config.yaml")


def with_change(path: str, value, base: dict | None = None) -> dict:
    """A copy of the default configuration with one key set (dotted path, list indices)."""
    config = copy.deepcopy(base or DEFAULT)
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return config


def error_of(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(config)
    return str(info.value)


def test_default_config_validates_and_gets_defaults():
    config = load()
    assert config["run"] == {
        "name": "demo",
        "run_type": "constrained",
        "chunk_size": 40,
        "max_set_size": 5,
    }
    assert config["modules"]["momma"]["platform"] == "FARGATE"
    assert config["modules"]["momma"]["retries"] == 1
    assert config["flpe"]["algorithms"] == [
        "geobam",
        "hivdi",
        "metroman",
        "momma",
        "sad",
        "sic4dvar",
    ]
    assert config_mod.module_names_by_stage(config)["flpe"] == config["flpe"]["algorithms"]
    assert validate(config) == config  # idempotent


def walk_keys(node: dict, root: dict, path: str = ""):
    """Every key the schema defines, with its schema node."""
    if "$ref" in node:
        node = config_mod._resolve(node, root)
    for key, sub in node.get("properties", {}).items():
        sub = config_mod._resolve(sub, root)
        yield f"{path}{key}", sub
        yield from walk_keys(sub, root, f"{path}{key}.")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield from walk_keys(extra, root, f"{path}*.")
    items = node.get("items")
    if isinstance(items, dict) and items.get("type") == "object":
        yield from walk_keys(items, root, f"{path}[].")


def test_every_schema_key_has_a_description_and_a_default_or_a_reason():
    schema = config_mod.schema()
    keys = dict(walk_keys(schema, schema))
    assert len(keys) > 40
    for key, node in keys.items():
        assert node.get("description", "").strip(), f"{key} has no description"
        assert "default" in node or node.get("x-no-default"), f"{key}: no default, no reason"
    assert keys["run.chunk_size"]["default"] == 1000
    assert keys["modules.*.tolerated_failure_percent"]["default"] == 0
    assert keys["modules.*.platform"]["default"] == "FARGATE"


def test_schema_defaults_validate_on_their_own():
    # a config with nothing but its modules gets every other section from the schema
    mounts = [{"filesystem": "input", "path": "/mnt/data"}]
    config = validate(
        {"modules": {"momma": {"stage": "flpe", "mounts": mounts}, "moi": {"mounts": mounts}}}
    )
    assert config["modules"]["moi"]["stage"] == "moi"  # derived: the module's name
    assert config["run"]["chunk_size"] == 1000
    assert config["domain"]["kind"] == "synthetic"
    momma = config["modules"]["momma"]
    assert config["flpe"]["algorithms"] == ["momma"]  # derived: the modules of stage flpe
    assert momma["image"] == "confluence-momma:latest"
    assert (momma["scope"], momma["worklist"]) == ("reach", "reaches.json")
    assert momma["arguments"] == ["{worklist}"]
    assert momma["mounts"][0]["subpath"] == ""


def test_scope_and_worklist_derive_each_other():
    mounts = [{"filesystem": "input", "path": "/mnt/data"}]
    config = validate(
        {
            "modules": {
                "a": {"scope": "set", "mounts": mounts},
                "b": {"worklist": "basin.json", "mounts": mounts},
                "c": {"stage": "flpe", "mounts": mounts},
            }
        }
    )
    assert config["modules"]["a"]["worklist"] == "sets.json"
    assert config["modules"]["b"]["scope"] == "basin"


def test_bad_scope_names_key_and_allowed_values():
    message = error_of(with_change("modules.momma.scope", "reachs"))
    assert (
        "config key modules.momma.scope: 'reachs' is not allowed; allowed values: reach, set, "
        "basin, continent"
    ) in message


def test_chunk_size_above_the_batch_limit():
    message = error_of(with_change("run.chunk_size", 20000))
    assert (
        "config key run.chunk_size: 20000 is above the maximum 10000 (AWS Batch array jobs hold "
        "at most 10,000 children)"
    ) in message


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "run.run_type",
            "both",
            "config key run.run_type: 'both' is not allowed; allowed values: constrained, "
            "unconstrained",
        ),
        ("run.max_set_size", 0, "config key run.max_set_size: 0 is below the minimum 1"),
        ("run.max_set_size", 50, "config key run.max_set_size: 50 is above run.chunk_size 40"),
        ("run.name", "my run", "config key run.name: 'my run' does not match"),
        ("domain.kind", "hydrosheds", "allowed values: synthetic, sword"),
        (
            "domain.gauge_fraction",
            1.5,
            "config key domain.gauge_fraction: 1.5 is above the maximum 1",
        ),
        ("domain.start", "2023-02-30", "config key domain.start: '2023-02-30' is not a date"),
        ("domain.days", "many", "config key domain.days: 'many' is not of type integer"),
        (
            "modules.momma.retries",
            11,
            "config key modules.momma.retries: 11 is above the maximum 10 (AWS Batch allows 1 "
            "to 10 attempts)",
        ),
        (
            "modules.moi.timeout_seconds",
            30,
            "config key modules.moi.timeout_seconds: 30 is below the minimum 60",
        ),
        (
            "modules.momma.vcpu",
            3,
            "config key modules.momma.vcpu: 3 is not allowed; allowed values: 0.25, 0.5, 1, 2, "
            "4, 8, 16",
        ),
        ("modules.momma.platform", "LAMBDA", "allowed values: FARGATE, EC2"),
        (
            "modules.momma.worklist",
            "sets.json",
            "config key modules.momma.worklist: 'sets.json' does not match scope 'reach'; a "
            "reach module reads reaches.json",
        ),
        (
            "modules.momma.tolerated_failure_percent",
            120,
            "modules.momma.tolerated_failure_percent: 120 is above the maximum 100",
        ),
        (
            "flpe.algorithms",
            ["geobam", "moi"],
            "config key flpe.algorithms.1: module 'moi' has stage 'moi', not flpe",
        ),
        (
            "flpe.algorithms",
            ["neobam"],
            "config key flpe.algorithms.0: 'neobam' is not a module; allowed values: geobam, "
            "hivdi, metroman, momma, sad, sic4dvar",
        ),
    ],
)
def test_bad_values_name_the_key(path, value, expected):
    assert expected in error_of(with_change(path, value))


def test_unknown_keys_and_continents_are_named():
    config = with_change("modules.momma.vcpus", 1)
    assert "config key modules.momma.vcpus: unknown key; allowed keys: arguments" in error_of(
        config
    )
    config = with_change("domain.continents", {"xx": {"basins": 1, "reaches_per_basin": [1, 2]}})
    assert (
        "config key domain.continents: key 'xx' is not allowed; allowed keys: af, eu, as"
        in error_of(config)
    )
    config = with_change("modules", {**DEFAULT["modules"], "Bad-Name": DEFAULT["modules"]["moi"]})
    assert "config key modules: key 'Bad-Name' must match" in error_of(config)


def test_missing_mounts_are_named():
    config = with_change("modules.momma", {"stage": "flpe"})
    assert "config key modules.momma.mounts is missing" in error_of(config)


def test_every_problem_is_reported_at_once():
    config = with_change("modules.momma.memory_mib", 3000)
    config = with_change("modules.geobam.memory_mib", 4096, config)
    message = error_of(config)
    assert "modules.momma.memory_mib" in message and "modules.geobam.memory_mib" in message


VALID_PAIRS = [
    (0.25, 512), (0.25, 1024), (0.25, 2048),
    (0.5, 1024), (0.5, 3072), (0.5, 4096),
    (1, 2048), (1, 5120), (1, 8192),
    (2, 4096), (2, 9216), (2, 16384),
    (4, 8192), (4, 20480), (4, 30720),
    (8, 16384), (8, 20480), (8, 61440),
    (16, 32768), (16, 40960), (16, 122880),
]  # fmt: skip
INVALID_PAIRS = [
    (0.25, 1536), (0.25, 3072),
    (0.5, 512), (0.5, 5120), (0.5, 1536),
    (1, 1024), (1, 9216),
    (2, 2048), (2, 17408),
    (4, 4096), (4, 31744), (4, 8704),
    (8, 8192), (8, 17408), (8, 65536),
    (16, 16384), (16, 36864), (16, 131072),
]  # fmt: skip


@pytest.mark.parametrize(("vcpu", "memory"), VALID_PAIRS)
def test_valid_fargate_pairs(vcpu, memory):
    assert config_mod.fargate_pair_valid(vcpu, memory)
    config = with_change("modules.sad.vcpu", vcpu)
    validate(with_change("modules.sad.memory_mib", memory, config))


@pytest.mark.parametrize(("vcpu", "memory"), INVALID_PAIRS)
def test_invalid_fargate_pairs(vcpu, memory):
    assert not config_mod.fargate_pair_valid(vcpu, memory)
    config = with_change("modules.sad.vcpu", vcpu)
    config = with_change("modules.sad.memory_mib", memory, config)
    if memory > 122880:
        assert "is above the maximum 122880" in error_of(config)
        return
    message = error_of(config)
    assert (
        f"config key modules.sad.memory_mib: {memory} is not a Fargate size for vcpu {vcpu}"
        in message
    )
    assert "allowed values:" in message and "(or set platform: EC2)" in message
    # EC2 has no Fargate pairs, but whole vCPUs only
    config = with_change("modules.sad.platform", "EC2", config)
    if vcpu == int(vcpu):
        validate(config)
    else:
        assert "config key modules.sad.vcpu: 0." in error_of(config)


def test_fargate_options_are_listed():
    assert config_mod.fargate_memory_options(0.25) == "512, 1024, 2048"
    assert config_mod.fargate_memory_options(8) == "16384-61440 in steps of 4096"


# The November 2021 deployment (shared/docs/confluence-contract.md).
IN = ("input", "", "/mnt/data/input")
FL = ("flpe", "", "/mnt/data/flpe")
MO = ("moi", "", "/mnt/data/moi")
ROOT = [("input", "", "/mnt/data")]
TABLE_2021 = {
    "input": ("input", "reaches.json", 8192, 1, ROOT),
    "priors": ("priors", "continent.json", 8192, 1, ROOT),
    "prediagnostics": (
        "prediagnostics", "reaches.json", 1024, 0.5,
        [IN, ("diagnostics", "prediagnostics", "/mnt/data/output")],
    ),
    "geobam": ("flpe", "reaches.json", 8192, 4, None),
    "hivdi": ("flpe", "reaches.json", 4096, 2, None),
    "metroman": ("flpe", "sets.json", 8192, 4, None),
    "momma": ("flpe", "reaches.json", 512, 0.25, None),
    "sad": ("flpe", "reaches.json", 2048, 1, None),
    "sic4dvar": ("flpe", "reaches.json", 2048, 1, None),
    "postdiagnostics_flpe": (
        "postdiagnostics_flpe", "reaches.json", 1024, 0.5,
        [IN, FL, ("diagnostics", "postdiagnostics/reach", "/mnt/data/output")],
    ),
    "moi": ("moi", "basin.json", 2048, 1, [IN, FL, ("moi", "", "/mnt/data/output")]),
    "postdiagnostics_moi": (
        "postdiagnostics_moi", "reaches.json", 1024, 0.5,
        [IN, FL, MO, ("diagnostics", "postdiagnostics/basin", "/mnt/data/output")],
    ),
    "offline": (
        "offline", "reaches.json", 2048, 1, [IN, FL, MO, ("offline", "", "/mnt/data/output")]
    ),
    "validation": (
        "validation", "reaches.json", 2048, 1,
        [IN, ("offline", "", "/mnt/data/offline"), FL, MO, ("validation", "", "/mnt/data/output")],
    ),
    "output": (
        "output", "continent.json", 2048, 1,
        [IN, FL, MO, ("diagnostics", "", "/mnt/data/diagnostics"),
         ("offline", "", "/mnt/data/offline"), ("validation", "", "/mnt/data/validation"),
         ("output", "", "/mnt/data/output")],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TABLE_2021))
def test_default_config_is_the_2021_deployment(name):
    stage, worklist, memory, vcpu, mounts = TABLE_2021[name]
    module = load()["modules"][name]
    assert (module["stage"], module["worklist"], module["memory_mib"], module["vcpu"]) == (
        stage,
        worklist,
        memory,
        vcpu,
    )
    got = [(m["filesystem"], m["subpath"], m["path"]) for m in module["mounts"]]
    if mounts is None:  # FLPE: input, its own flpe folder, and the prediagnostics flags
        mounts = [
            ("input", "", "/mnt/data/input"),
            ("flpe", name, "/mnt/data/output"),
            ("diagnostics", "prediagnostics", "/mnt/data/prediagnostics"),
        ]
        if name == "sic4dvar":
            mounts.append(("logs", "sic4dvar", "/mnt/data/logs"))
    assert got == mounts
    hours = {"moi": 15, "priors": 30, "output": 30}.get(name, 2)
    assert module["timeout_seconds"] == hours * 3600
    assert module["image"] == f"confluence-{name}:latest"


def test_default_outputs_and_arguments():
    modules = load()["modules"]
    assert modules["momma"]["outputs"] == ["/mnt/data/output/{reach_id}_momma.nc"]
    assert modules["metroman"]["outputs"] == ["/mnt/data/output/{set_id}_metroman.nc"]
    assert modules["moi"]["outputs"] == ["/mnt/data/output/{reach_id}_integrator.nc"]
    assert modules["input"]["outputs"] == ["/mnt/data/swot/{reach_id}_SWOT.nc"]
    assert modules["priors"]["arguments"] == ["{worklist}", "{run_type}"]
    assert modules["output"]["outputs"] == [
        "/mnt/data/output/sos/{continent}_sword_v16_SOS_results.nc"
    ]
    for name, module in modules.items():
        expected = {"reach": 10, "set": 25}.get(module["scope"], 0)
        assert module["tolerated_failure_percent"] == expected, name


@pytest.mark.parametrize(
    ("mounts", "expected"),
    [
        (
            [{"filesystem": "scratch", "path": "/mnt/data/input"}],
            "config key modules.momma.mounts.0.filesystem: 'scratch' is not a known file "
            "system; allowed values: input, flpe",
        ),
        (
            [{"filesystem": "input", "path": "mnt/data/input"}],
            "config key modules.momma.mounts.0.path: 'mnt/data/input' does not match",
        ),
        (
            [{"filesystem": "input", "path": "/mnt/data/input/../x"}],
            "is not a normalised absolute container path",
        ),
        (
            [
                {"filesystem": "input", "path": "/mnt/data/input"},
                {"filesystem": "flpe", "path": "/mnt/data/input/momma"},
            ],
            "config key modules.momma.mounts.1.path: /mnt/data/input/momma would be nested "
            "inside the mount /mnt/data/input",
        ),
        (
            [
                {"filesystem": "input", "path": "/mnt/data"},
                {"filesystem": "flpe", "path": "/mnt/data/output"},
            ],
            "nested inside the mount /mnt/data; mounts may not nest (a mount at /mnt/data must "
            "be the module's only mount)",
        ),
        (
            [
                {"filesystem": "input", "path": "/mnt/data/input"},
                {"filesystem": "flpe", "path": "/mnt/data/input"},
            ],
            "is already the path of modules.momma.mounts.0",
        ),
        (
            [{"filesystem": "flpe", "subpath": "../moi", "path": "/mnt/data/output"}],
            "config key modules.momma.mounts.0.subpath: '../moi' does not match the pattern",
        ),
    ],
)
def test_bad_mounts(mounts, expected):
    assert expected in error_of(with_change("modules.momma.mounts", mounts))


def test_a_single_mount_at_the_root_is_allowed():
    config = with_change("modules.momma.mounts", [{"filesystem": "input", "path": "/mnt/data"}])
    config = with_change(
        "modules.momma.outputs", ["/mnt/data/flpe/momma/{reach_id}_momma.nc"], config
    )
    validate(config)


@pytest.mark.parametrize(
    ("module", "outputs", "expected"),
    [
        (
            "momma",
            ["/mnt/data/output/{set_id}_momma.nc"],
            "config key modules.momma.outputs.0: placeholder {set_id} is not allowed for scope "
            "reach; allowed placeholders: {reach_id}",
        ),
        (
            "metroman",
            ["/mnt/data/output/{reach_id}_metroman.nc"],
            "placeholder {reach_id} is not allowed for scope set; allowed placeholders: {set_id}",
        ),
        ("output", ["/mnt/data/output/{reach_id}.nc"], "allowed placeholders: {continent}"),
        (
            "momma",
            ["output/{reach_id}_momma.nc"],
            "'output/{reach_id}_momma.nc' is not an absolute container path",
        ),
        (
            "momma",
            ["/mnt/data/flpe/{reach_id}_momma.nc"],
            "is not under any of the module's mounts (/mnt/data/input, /mnt/data/output, "
            "/mnt/data/prediagnostics)",
        ),
        ("momma", ["/mnt/data/output/{reach_id_momma.nc"], "is not a template"),
    ],
)
def test_bad_output_patterns(module, outputs, expected):
    assert expected in error_of(with_change(f"modules.{module}.outputs", outputs))


def test_output_globs_and_basin_fields_are_allowed():
    config = with_change("modules.momma.outputs", ["/mnt/data/output/{reach_id}_*.png"])
    config = with_change(
        "modules.moi.outputs", ["/mnt/data/output/{basin_id}/{reach_id}.nc"], config
    )
    validate(config)


def test_argument_placeholders():
    message = error_of(with_change("modules.priors.arguments", ["{worklist}", "{version}"]))
    assert (
        "config key modules.priors.arguments.1: placeholder {version} is not allowed; "
        "allowed placeholders: {run_type}, {unit}, {worklist}" in message
    )


def test_domain_semantics():
    config = with_change("domain.continents", {"eu": {"basins": 2, "reaches_per_basin": [9, 3]}})
    assert (
        "config key domain.continents.eu.reaches_per_basin: [9, 3]: the minimum is above the "
        "maximum" in error_of(config)
    )
    config = with_change("domain.continents", {"eu": {"basins": 1500, "reaches_per_basin": [1, 3]}})
    assert "config key domain.continents.eu.basins: 1500 is above the maximum 999" in error_of(
        config
    )
    config = with_change("domain.continents", {})
    assert "a synthetic domain needs at least one continent" in error_of(config)


def test_global_yaml_validates_and_overrides_only_domain_and_run():
    raw = config_mod.read_yaml(PROJECT / "config" / "global.yaml")
    assert set(raw) == {"domain", "run"}
    config = load([str(PROJECT / "config" / "global.yaml")])
    default = load()
    assert {k: v for k, v in config.items() if k not in ("domain", "run")} == {
        k: v for k, v in default.items() if k not in ("domain", "run")
    }
    assert config["run"]["chunk_size"] == 1000
    assert config["domain"]["observations"] is False
    assert set(config["domain"]["continents"]) == {"af", "eu", "as", "oc", "sa", "na"}


def test_load_merges_files_and_overrides_in_order(tmp_path):
    first = tmp_path / "first.yaml"
    first.write_text(
        yaml.safe_dump(
            {"run": {"chunk_size": 100}, "modules": {"momma": {"vcpu": 1, "memory_mib": 2048}}}
        )
    )
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump({"run": {"chunk_size": 200}}))
    config = load([str(first), str(second)], overrides={"run": {"name": "rerun"}})
    assert config["run"] == {
        "name": "rerun",
        "run_type": "constrained",
        "chunk_size": 200,
        "max_set_size": 5,
    }
    assert config["modules"]["momma"]["memory_mib"] == 2048
    assert config["modules"]["momma"]["outputs"] == ["/mnt/data/output/{reach_id}_momma.nc"]
    # without the base, a file must be complete
    with pytest.raises(ConfigError, match="config key modules is missing"):
        load([str(second)], base=False)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load([str(tmp_path / "nope.yaml")])
    broken = tmp_path / "broken.yaml"
    broken.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match=f"config file {broken} is not valid YAML"):
        load([str(broken)])
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load([str(listing)])


def test_validate_does_not_change_its_argument():
    config = copy.deepcopy(DEFAULT)
    validate(config)
    assert config == DEFAULT


def test_accessors():
    config = load()
    stages = config_mod.module_names_by_stage(config)
    assert stages["moi"] == ["moi"]
    assert config_mod.modules_of_scope(config, "continent") == ["priors", "output"]
    registry = load(overrides={"image_registry": "123.dkr.ecr.us-west-2.amazonaws.com/"})
    assert (
        names.module_image(registry, "moi")
        == "123.dkr.ecr.us-west-2.amazonaws.com/confluence-moi:latest"
    )
