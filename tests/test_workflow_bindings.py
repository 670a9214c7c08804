"""The DAG's shape as the rules bind it: which sentinel needs which."""

from confluence import config
from confluence.workflow import CHAIN, Workflow, sentinel

ALGORITHMS = ["geobam", "hivdi", "metroman", "momma", "sad", "sic4dvar"]


def workflow() -> Workflow:
    return Workflow(config.load())


def test_chunks_pipeline_without_stage_barriers():
    wf = workflow()
    first, second = wf.plan.chunks[0], wf.plan.chunks[1]
    assert wf.upstream("prediagnostics", first.id) == [sentinel("input", first.id)]
    for algorithm in ALGORITHMS:
        assert wf.upstream(algorithm, first.id) == [
            sentinel("prediagnostics", first.id),
            sentinel("priors", first.continent),
        ]
    for module in CHAIN:
        needs = wf.upstream(module, first.id)
        assert all(second.id not in path for path in needs), module
    assert wf.upstream("moi", first.id)[0] == sentinel("postdiagnostics_flpe", first.id)


def test_continent_fan_ins_cover_exactly_the_continents_chunks():
    wf = workflow()
    for continent in wf.plan.continents:
        chunks = [c.id for c in wf.plan.chunks if c.continent == continent]
        assert wf.upstream("priors", continent) == [sentinel("input", c) for c in chunks]
        assert wf.upstream("output", continent) == [sentinel("validation", c) for c in chunks]


def test_inputs_name_the_modules_own_work_list_and_the_domain_files():
    wf = workflow()
    chunk = wf.plan.chunks[0]
    assert wf.inputs("metroman", chunk.id)["worklist"].endswith(f"{chunk.id}/sets.json")
    assert wf.inputs("moi", chunk.id)["worklist"].endswith(f"{chunk.id}/basin.json")
    domain = wf.inputs("input", chunk.id)["domain"]
    assert any(path.endswith(f"sword/{chunk.continent}_sword_v16.nc") for path in domain)


def test_worklist_digest_changes_only_with_the_units_reaches():
    base = config.load()
    grown = config.load(overrides={"domain": {"continents": {"eu": {"basins": 5}}}})
    before, after = Workflow(base), Workflow(grown)
    na_chunks = [c.id for c in before.plan.chunks if c.continent == "na"]
    for chunk in na_chunks:
        assert before.worklists_digest(chunk) == after.worklists_digest(chunk)
    assert before.worklists_digest("eu") != after.worklists_digest("eu")


def test_every_sentinel_is_listed_once():
    wf = workflow()
    sentinels = wf.all_sentinels()
    chunks, continents = len(wf.plan.chunks), len(wf.plan.continents)
    assert len(sentinels) == len(set(sentinels))
    assert len(sentinels) == chunks * (2 + len(ALGORITHMS) + len(CHAIN)) + 2 * continents
