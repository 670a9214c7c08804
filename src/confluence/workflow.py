"""What the Snakemake rules need, as plain functions over the configuration and the plan.

``rules/common.smk`` binds these in one line each, so the DAG's shape (which sentinel
depends on which) is defined and unit-tested here.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from functools import cached_property
from pathlib import Path

from confluence import contract, plan

WORKLISTS = ("reaches.json", "sets.json", "basin.json", "continent.json")
#: Stages after FLPE, in order; each runs per chunk and needs the one before it.
CHAIN = ("postdiagnostics_flpe", "moi", "postdiagnostics_moi", "offline", "validation")


def sentinel(module: str, unit: str) -> str:
    return f"results/{module}/{unit}.json"


def state(module: str, unit: str) -> str:
    return f"state/{module}/{unit}.json"


def _per_run(config: dict, key: str) -> str | None:
    base = config["storage"][key]
    if not base:
        return None
    run = config["run"]
    return "/".join([base.rstrip("/"), run["run_type"], run["name"]])


def publish_destination(config: dict) -> str | None:
    """Where chunk outputs go: storage.publish/{run_type}/{run name}; None publishes nothing."""
    return _per_run(config, "publish")


def state_mirror(config: dict) -> str | None:
    """Where a Batch controller mirrors sentinels and state: storage.state/{run_type}/{run
    name}, so runs of other names never see each other's; None mirrors nothing."""
    return _per_run(config, "state")


def plan_spec(config: dict) -> dict:
    """The part of the configuration that decides the plan."""
    return {"run": config["run"], "domain": config["domain"]}


class Workflow:
    def __init__(self, config: dict):
        self.config = config
        self.efs = config["paths"]["efs"]
        self.algorithms = list(config["flpe"]["algorithms"])

    @cached_property
    def plan(self) -> plan.Plan:
        return plan.plan_from_config(self.config)

    @cached_property
    def continent_of(self) -> dict[str, str]:
        units = {chunk.id: chunk.continent for chunk in self.plan.chunks}
        units.update({c: c for c in self.plan.continents})
        return units

    def module(self, name: str) -> dict:
        return self.config["modules"][name]

    def units(self, name: str) -> list[str]:
        if self.module(name)["scope"] == "continent":
            return list(self.plan.continents)
        return [chunk.id for chunk in self.plan.chunks]

    @cached_property
    def _chunk_ids(self) -> dict[str, list[str]]:
        by_continent = {c: [] for c in self.plan.continents}
        for chunk in self.plan.chunks:
            by_continent[chunk.continent].append(chunk.id)
        return by_continent

    def chunk_ids(self, continent: str) -> list[str]:
        return self._chunk_ids[continent]

    # --- inputs of each rule ---------------------------------------------------------------

    def domain_files(self, continent: str) -> list[str]:
        """A continent's inputs on the input file system, as the stage-in writes them."""
        input_fs = f"{self.efs}/input"
        return [
            f"{input_fs}/sword/{contract.sword_name(continent)}",
            f"{input_fs}/sos/previous/{contract.sos_priors_name(continent)}",
            f"{input_fs}/gage/{continent}_gauges.nc",
            f"{input_fs}/swot_raw/{continent}",
        ]

    def staging_sources(self, continent: str) -> list[str]:
        """The synthetic domain's files in the local inputs folder; an external bucket has
        nothing Snakemake can build, so stage-in then depends on nothing."""
        if self.config["domain"]["kind"] != "synthetic":
            return []
        inputs = self.config["storage"]["inputs"]
        return [
            f"{inputs}/sword/{contract.sword_name(continent)}",
            f"{inputs}/sos/previous/{contract.sos_priors_name(continent)}",
            f"{inputs}/gage/{continent}_gauges.nc",
            f"{self.config['paths']['truth']}/{continent}_truth.nc",
        ]

    @property
    def state_mirror(self) -> str | None:
        return state_mirror(self.config)

    @property
    def publish_option(self) -> str:
        """The runner's --publish option, or nothing."""
        destination = publish_destination(self.config)
        return f" --publish {shlex.quote(destination)}" if destination else ""

    def upstream(self, name: str, unit: str) -> list[str]:
        """Sentinels that module ``name`` needs for ``unit``: the DAG, chunk by chunk."""
        continent = self.continent_of[unit]
        flpe = [sentinel(algo, unit) for algo in self.algorithms]
        if name == "input":
            return []
        if name == "priors":
            return [sentinel("input", chunk) for chunk in self.chunk_ids(unit)]
        if name == "prediagnostics":
            return [sentinel("input", unit)]
        if name in self.algorithms:
            return [sentinel("prediagnostics", unit), sentinel("priors", continent)]
        if name == "postdiagnostics_flpe":
            return flpe
        if name in CHAIN:
            before = CHAIN[CHAIN.index(name) - 1]
            extra = [sentinel("moi", unit)] if name in ("offline", "validation") else []
            return [sentinel(before, unit), *extra, *flpe]
        if name == "output":
            return [sentinel("validation", chunk) for chunk in self.chunk_ids(unit)]
        raise KeyError(f"module {name!r} has no place in the DAG")

    def inputs(self, name: str, unit: str) -> dict[str, list[str]]:
        inputs = {
            "worklist": f"{self.efs}/input/worklists/{unit}/{self.module(name)['worklist']}",
            "upstream": self.upstream(name, unit),
        }
        if name in ("input", "priors"):
            inputs["domain"] = self.domain_files(self.continent_of[unit])
        return inputs

    @cached_property
    def _module_json(self) -> dict[str, str]:
        return {
            name: json.dumps(module, sort_keys=True, separators=(",", ":"))
            for name, module in self.config["modules"].items()
        }

    def module_json(self, name: str) -> str:
        return self._module_json[name]

    def worklists_digest(self, unit: str) -> str:
        """Changes exactly when the unit's work lists change, so Snakemake reruns only those.

        The work lists are a function of the unit's continent, reaches and sets, so those
        are hashed instead of the (much larger) lists themselves.
        """
        if unit in self.plan.continents:
            chunks = self.plan.chunks_of(unit)
        else:
            chunks = [self.plan.chunk(unit)]
        content = [self.continent_of[unit], [[c.reach_ids, c.sets] for c in chunks]]
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]

    def targets(self) -> list[str]:
        return [sentinel("output", c) for c in self.plan.continents]

    def all_sentinels(self) -> list[str]:
        modules = ["input", "priors", "prediagnostics", *self.algorithms, *CHAIN, "output"]
        return [sentinel(name, unit) for name in modules for unit in self.units(name)]


def worklists_cli(args) -> int:
    spec = json.loads(args.spec)
    the_plan = plan.plan_from_config(spec)
    plan.write_worklists(the_plan, args.unit, Path(args.output_dir))
    return 0
