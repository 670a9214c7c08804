"""Batch names, the submission ledger and environment references in the configuration."""

import csv
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from confluence.batch import names
from confluence.batch.ledger import COLUMNS, Ledger
from confluence.config import ConfigError, load

VALID_JOB_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@given(
    run=st.text(min_size=1, max_size=64),
    module=st.text(min_size=1, max_size=40),
    unit=st.text(min_size=1, max_size=200),
)
def test_job_names_are_valid_and_deterministic(run, module, unit):
    name = names.job_name(run, module, unit)
    assert VALID_JOB_NAME.match(name)
    assert name == names.job_name(run, module, unit)


def test_long_job_names_stay_distinct():
    unit_a, unit_b = "na_" + "7" * 200, "na_" + "7" * 199 + "8"
    a, b = names.job_name("demo", "geobam", unit_a), names.job_name("demo", "geobam", unit_b)
    assert len(a) == len(b) == 128 and a != b


def test_queue_and_job_definition_take_the_prefix_but_not_an_arn():
    config = load(
        overrides={
            "aws": {"prefix": "dev-"},
            "modules": {
                "moi": {
                    "queue": "arn:aws:batch:us-west-2:123456789012:job-queue/moi-q",
                    "job_definition": "moi-jd:3",
                }
            },
        }
    )
    assert names.queue(config, "geobam") == "dev-flpe"
    assert names.job_definition(config, "geobam") == "dev-geobam"
    assert names.queue(config, "moi") == "arn:aws:batch:us-west-2:123456789012:job-queue/moi-q"
    assert names.job_definition(config, "moi") == "dev-moi-jd:3"
    assert names.publish_job_definition(config) == "dev-publish"
    assert "dev-flpe" in names.queues(config)


def test_a_bad_queue_name_names_the_key():
    with pytest.raises(ConfigError, match="modules.moi.queue"):
        load(overrides={"modules": {"moi": {"queue": "has space"}}})


def test_environment_references_expand_and_a_missing_one_is_named(monkeypatch):
    monkeypatch.setenv("CONFLUENCE_TEST_BUCKET", "s3://sos-bucket")
    monkeypatch.delenv("CONFLUENCE_TEST_UNSET", raising=False)
    config = load(
        overrides={
            "storage": {"publish": "${CONFLUENCE_TEST_BUCKET}/runs"},
            "aws": {"prefix": "${CONFLUENCE_TEST_UNSET:-team-}"},
        }
    )
    assert config["storage"]["publish"] == "s3://sos-bucket/runs"
    assert config["aws"]["prefix"] == "team-"
    with pytest.raises(ConfigError, match="aws.region: environment variable CONFLUENCE_TEST_UNSET"):
        load(overrides={"aws": {"region": "${CONFLUENCE_TEST_UNSET}"}})


def test_ledger_keeps_the_legacy_columns_first_and_survives_a_restart(tmp_path):
    path = tmp_path / "logs" / "submissions.csv"
    ledger = Ledger(path)
    ledger.add(stage="flpe", algorithm="geobam", job_name="demo_geobam_eu_1_items", job_id="j-1")
    ledger.finish(
        {
            "jobId": "j-1",
            "status": "FAILED",
            "attempts": [{}, {}],
            "startedAt": 1_700_000_000_000,
            "stoppedAt": 1_700_000_060_000,
        }
    )
    ledger.flush()
    rows = list(csv.DictReader(open(path)))
    assert COLUMNS[:4] == ["stage", "algorithm", "job_name", "job_id"]
    assert rows[0]["status"] == "FAILED" and rows[0]["attempts"] == "2"
    assert rows[0]["stopped"] == "2023-11-14T22:14:20+00:00"
    again = Ledger(path)
    again.add(stage="moi", algorithm="moi", job_name="demo_moi_eu_1_items", job_id="j-2")
    assert [r["job_id"] for r in csv.DictReader(open(path))] == ["j-1", "j-2"]
