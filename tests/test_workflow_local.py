"""The whole DAG on a tiny domain with the local profile: the real Snakemake, real files."""

from __future__ import annotations

import csv
import json
import os

import pytest
from s3_server import S3Server
from workflow_helpers import ROOT, TINY, planned_jobs, sentinel, snakemake

from confluence import config as config_module
from confluence import plan as plan_module
from confluence.workflow import CHAIN

ALGORITHMS = ["geobam", "hivdi", "metroman", "momma", "sad", "sic4dvar"]


@pytest.fixture(scope="module")
def tiny_plan():
    config = config_module.load([str(ROOT / "config" / "config.yaml"), str(TINY)])
    return plan_module.plan_from_config(config)


BUCKET = "confluence-sos"


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, s3):
    """The whole chain on the tiny domain, publishing every chunk to a real S3 endpoint."""
    workdir = tmp_path_factory.mktemp("run")
    publish = workdir / "publish.yaml"
    publish.write_text(f"storage:\n  publish: s3://{BUCKET}/runs\n")
    run(workdir)
    return workdir


def run(workdir, *args, **options):
    """Snakemake on the finished run's directory, with the same configuration as it ran."""
    return snakemake(workdir, *args, configfiles=[workdir / "publish.yaml"], **options)


def test_dry_run_shows_every_chunk_of_every_module(tmp_path, tiny_plan):
    result = snakemake(tmp_path, "-n")
    jobs = planned_jobs(result.stdout)
    chunks, continents = len(tiny_plan.chunks), len(tiny_plan.continents)
    assert chunks >= 3 and continents == 2
    per_chunk = ["input", "prediagnostics", *CHAIN]
    assert {rule: jobs.get(rule) for rule in per_chunk} == dict.fromkeys(per_chunk, chunks)
    assert jobs["flpe"] == len(ALGORITHMS) * chunks
    assert jobs["priors"] == jobs["output"] == jobs["synthesize"] == continents
    assert jobs["stage_in"] == continents
    assert jobs["plan"] == chunks + continents
    assert not (tmp_path / "results").exists(), "a dry run must not write results"


def test_whole_chain_runs_and_isolates_the_faulty_reaches(finished_run, tiny_plan):
    for chunk in tiny_plan.chunks:
        for module in ["input", "prediagnostics", *ALGORITHMS, *CHAIN]:
            doc = sentinel(finished_run, module, chunk.id)
            assert doc["unit"] == chunk.id and doc["code_version"]["package"]
            assert doc["counts"]["total"] == len(doc["items"]) > 0
            for item in doc["items"]:
                for output in item["outputs"]:
                    path = finished_run / "data" / "efs" / output["path"]
                    assert path.stat().st_size == output["size"]
    for continent in tiny_plan.continents:
        results = sentinel(finished_run, "output", continent)
        (item,) = results["items"]
        assert item["status"] == "ok"
        assert any(
            o["path"].endswith(f"{continent}_sword_v16_SOS_results.nc") for o in item["outputs"]
        )

    # Each continent has one faulty reach: it fails in the FLPE modules, named in the message,
    # and its chunk still counts as done because the failure is within the tolerance.
    failures = [
        (module, chunk.id, item)
        for chunk in tiny_plan.chunks
        for module in ["geobam", "momma"]
        for item in sentinel(finished_run, module, chunk.id)["items"]
        if item["status"] == "failed"
    ]
    assert len({item["id"] for _, _, item in failures}) == 2
    for _, _, item in failures:
        assert item["id"] in item["message"]

    with open(finished_run / "results" / "summary" / "modules.csv") as f:
        rows = {row["module"]: row for row in csv.DictReader(f)}
    assert set(rows) >= {"input", "priors", "output", *ALGORITHMS, *CHAIN}
    assert int(rows["geobam"]["failed"]) >= 2
    assert list((finished_run / "results" / "summary" / "figures").glob("*.png"))


def test_nothing_left_to_do_after_a_run(finished_run):
    result = run(finished_run, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_forcerun_of_one_chunk_runs_exactly_it_and_its_descendants(finished_run, tiny_plan):
    chunk = tiny_plan.chunks[0]
    target = f"results/moi/{chunk.id}.json"
    jobs = planned_jobs(run(finished_run, "-n", "--forcerun", target).stdout)
    assert jobs == {
        "moi": 1,
        "postdiagnostics_moi": 1,
        "offline": 1,
        "validation": 1,
        "output": 1,
        "summary": 1,
        "all": 1,
    }
    untouched = finished_run / "results" / "moi" / f"{tiny_plan.chunks[-1].id}.json"
    before = untouched.stat().st_mtime_ns
    run(finished_run, "--forcerun", target)
    assert untouched.stat().st_mtime_ns == before
    assert sentinel(finished_run, "moi", chunk.id)["counts"]["failed"] == 0


def test_failed_items_are_isolated_and_rerun_alone(finished_run, tiny_plan):
    chunk = next(c for c in tiny_plan.chunks if len(c.reach_ids) >= 6)
    swot = finished_run / "data" / "efs" / "input" / "swot"
    broken = [int(r) for r in chunk.reach_ids[:2]]
    backups = {}
    for reach in broken:
        path = swot / f"{reach}_SWOT.nc"
        backups[path] = path.read_bytes()
        path.write_bytes(backups[path][:100])  # a truncated download

    target = f"results/prediagnostics/{chunk.id}.json"
    result = run(finished_run, "--forcerun", target, check=False)
    assert result.returncode != 0, "2 failures of a small chunk exceed the 10 % tolerance"
    assert not (finished_run / target).exists()
    state = json.loads((finished_run / "state" / "prediagnostics" / f"{chunk.id}.json").read_text())
    failed = {item["id"]: item["message"] for item in state["items"] if item["status"] == "failed"}
    assert set(failed) == {str(r) for r in broken}
    for reach, message in failed.items():
        assert reach in message
    kept = {i["id"]: i["start"] for i in state["items"] if i["status"] == "ok"}
    assert len(kept) == len(chunk.reach_ids) - 2

    for path, content in backups.items():
        path.write_bytes(content)
    # The same command again: the job repeats only its two failed items.
    run(finished_run, "--forcerun", target)
    done = sentinel(finished_run, "prediagnostics", chunk.id)
    assert done["counts"]["failed"] == 0
    # The items that had succeeded were not run again: same start times as before.
    assert {i["id"]: i["start"] for i in done["items"] if i["id"] in kept} == kept
    log = (finished_run / "logs" / "prediagnostics" / f"{chunk.id}.log").read_text()
    assert f"{len(kept)} kept from the previous attempt, 2 to run" in log


def test_report_has_the_table_and_the_figures(finished_run):
    run(finished_run, "--report", "report.html")
    html = (finished_run / "report.html").read_text(errors="replace")
    assert "modules.csv" in html and ".png" in html


def test_bad_config_value_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("modules:\n  momma:\n    scope: reachs\n")
    result = snakemake(
        tmp_path, "-n", "--configfile", str(ROOT / "config" / "config.yaml"), str(bad), check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "modules.momma.scope" in output and "reach, set, basin, continent" in output
    assert not os.path.exists(tmp_path / "results")


def test_inspection_commands_describe_the_run(finished_run, tiny_plan):
    rulegraph = run(finished_run, "--rulegraph").stdout
    assert rulegraph.lstrip().startswith("digraph")
    for rule in ["input", "priors", "flpe", "moi", "validation", "output"]:
        assert f'label = "{rule}"' in rulegraph
    dag = run(finished_run, "--dag").stdout
    chunks = len(tiny_plan.chunks)
    for rule in ["input", "prediagnostics", *CHAIN]:
        assert dag.count(f'label = "{rule}') == chunks, rule
    assert dag.count('label = "flpe') == len(ALGORITHMS) * chunks
    summary = run(finished_run, "--summary").stdout.splitlines()
    assert summary[0].split("\t")[:3] == ["output_file", "date", "rule"]
    rows = [line.split("\t") for line in summary[1:]]
    assert {row[2] for row in rows} >= {"input", "flpe", "moi", "output", "summary"}
    assert all(row[4] == "ok" for row in rows if row[0].startswith("results/"))


def test_every_chunk_is_published_to_s3_exactly_as_its_sentinel_lists(finished_run, s3):
    listing = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    objects = {o["Key"]: o for page in listing for o in page.get("Contents", [])}
    published = 0
    for path in (finished_run / "results").glob("*/*.json"):
        if path.parent.name == "summary":
            continue
        doc = json.loads(path.read_text())
        assert doc["published"]["ok"], path
        listed = {o["path"]: o for item in doc["items"] for o in item["outputs"]}
        entries = {e["path"]: e for e in doc["published"]["files"]}
        assert set(entries) == set(listed), path
        for rel, output in listed.items():
            key = f"runs/constrained/demo/{rel}"
            assert objects[key]["Size"] == output["size"]
            assert entries[rel]["size"] == output["size"]
            published += 1
    assert published == len(objects) > 100
