"""The local runner on real module items: mounts, sentinels, tolerance, reruns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from confluence import config, manifest, mounts, runner

MODULES = config.load()["modules"]


def test_mount_tree_maps_container_paths_to_file_systems(tmp_path):
    efs = tmp_path / "efs"
    module = MODULES["geobam"]
    root = mounts.build_mount_root(module["mounts"], efs, tmp_path / "job")
    assert (root / "output").resolve() == (efs / "flpe" / "geobam").resolve()
    assert (root / "prediagnostics").resolve() == (efs / "diagnostics" / "prediagnostics").resolve()
    local = mounts.to_local("/mnt/data/output/7_geobam.nc", module["mounts"], efs)
    assert local == efs / "flpe" / "geobam" / "7_geobam.nc"
    with pytest.raises(ValueError, match="not under any of the module's mounts"):
        mounts.to_local("/elsewhere/x.nc", module["mounts"], efs)


def test_a_mount_at_the_root_is_the_whole_tree(tmp_path):
    root = mounts.build_mount_root(MODULES["input"]["mounts"], tmp_path / "efs", tmp_path / "j")
    assert root.resolve() == (tmp_path / "efs" / "input").resolve()


def test_items_and_arguments_per_scope():
    reach = {"reach_id": 21200000011}
    assert runner.items_of("reach", [reach])[0].fields == [{"reach_id": 21200000011}]
    (item,) = runner.items_of("set", [[reach, {"reach_id": 21200000021}]])
    assert item.id == "21200000011-21200000021"
    (item,) = runner.items_of("basin", [{"basin_id": 2120, "reach_id": [1, 2]}])
    assert [f["reach_id"] for f in item.fields] == [1, 2] and item.id == "2120"
    assert runner.items_of("continent", [{"eu": [2]}])[0].id == "eu"
    args = runner.arguments(MODULES["priors"], "eu", "unconstrained")
    assert args == ["worklists/eu/continent.json", "unconstrained"]


@pytest.fixture
def chunk(tmp_path, prepared_inputs, make_worklists):
    """An EFS tree holding the prepared input file system and one chunk's work lists."""
    efs = tmp_path / "efs"
    shutil.copytree(prepared_inputs.root, efs / "input")
    continent = prepared_inputs.continents[0]
    reaches = prepared_inputs.reach_ids(continent)
    make_worklists(efs / "input" / "worklists" / "c1", reaches)
    return efs, reaches


def run(efs: Path, module: dict, tmp_path: Path, workers: int = 2) -> bool:
    return runner.run_chunk(
        "prediagnostics",
        "c1",
        module,
        efs,
        tmp_path / "sentinel.json",
        tmp_path / "state.json",
        workers=workers,
    )


def test_failed_item_is_isolated_then_rerun_alone(tmp_path, chunk):
    efs, reaches = chunk
    module = {**MODULES["prediagnostics"], "tolerated_failure_percent": 0}
    broken = efs / "input" / "swot" / f"{reaches[0]}_SWOT.nc"
    content = broken.read_bytes()
    broken.write_bytes(content[:64])

    assert not run(efs, module, tmp_path)
    assert not (tmp_path / "sentinel.json").exists()
    state = manifest.load(tmp_path / "state.json")
    statuses = {item["id"]: item["status"] for item in state["items"]}
    assert statuses.pop(str(reaches[0])) == "failed"
    assert set(statuses.values()) == {"ok"}
    failed = next(i for i in state["items"] if i["status"] == "failed")
    assert str(reaches[0]) in failed["message"]
    for item in state["items"]:
        for output in item["outputs"]:
            assert manifest.record_still_valid(output, efs)

    broken.write_bytes(content)
    assert run(efs, module, tmp_path, workers=1)
    done = json.loads((tmp_path / "sentinel.json").read_text())
    assert done["counts"] == {"ok": len(reaches), "failed": 0, "skipped": 0, "total": len(reaches)}
    before = {i["id"]: i["start"] for i in state["items"] if i["status"] == "ok"}
    after = {i["id"]: i["start"] for i in done["items"] if i["id"] in before}
    assert after == before, "items that had succeeded must not run again"


def test_changed_inputs_rerun_everything(tmp_path, chunk):
    efs, reaches = chunk
    module = {**MODULES["prediagnostics"], "tolerated_failure_percent": 0}
    broken = efs / "input" / "swot" / f"{reaches[0]}_SWOT.nc"
    broken.write_bytes(broken.read_bytes()[:64])
    assert not run(efs, module, tmp_path)
    # Another module configuration is another fingerprint: nothing old is reused.
    module = {**module, "tolerated_failure_percent": 100}
    assert run(efs, module, tmp_path)
    doc = json.loads((tmp_path / "sentinel.json").read_text())
    old = manifest.load(tmp_path / "state.json")
    assert doc["counts"]["failed"] == 1 and old["fingerprint"] == doc["fingerprint"]


def test_declared_output_missing_fails_the_item(tmp_path, chunk):
    efs, reaches = chunk
    module = {**MODULES["prediagnostics"], "outputs": ["/mnt/data/output/{reach_id}_nothing.nc"]}
    module["tolerated_failure_percent"] = 100
    assert run(efs, module, tmp_path)
    doc = json.loads((tmp_path / "sentinel.json").read_text())
    assert {i["status"] for i in doc["items"]} == {"failed"}
    assert "did not write /mnt/data/output/" in doc["items"][0]["message"]
