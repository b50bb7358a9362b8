"""``kedro run --pipeline=reveal --env=test`` end to end (the AIGI test images -> REVEAL-Bench -> SFT -> GRPO
-> evaluation -> registry), then what the issue asks of it, read from the run's own outputs and MLflow."""

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from ..conftest import _merged
from .conftest import run_session

TERMS = ("accuracy", "format", "steps", "reasoning_match", "evidence_faithfulness", "logic")


def _params(project, block: str) -> dict:
    import yaml

    base = yaml.safe_load((project / "conf/base/parameters_reveal.yml").read_text())[block]
    return _merged(base, yaml.safe_load((project / "conf/test/parameters_reveal.yml").read_text()).get(block) or {})


@pytest.fixture(scope="module")
def reveal_run(project):
    run_session(project, "reveal")
    bench, reveal = _params(project, "reveal_bench"), _params(project, "reveal")
    reports = project / "data/08_reporting"
    return SimpleNamespace(project=project, bench=bench, reveal=reveal,
                           records=[json.loads(line) for line in
                                    (project / bench["out_dir"] / "records.jsonl").read_text().splitlines()],
                           bench_report=json.loads((reports / "reveal_bench/report.json").read_text()),
                           metrics=json.loads((reports / "reveal/metrics.json").read_text()),
                           grpo=json.loads((reports / "reveal/grpo.json").read_text()),
                           sft=json.loads((reports / "reveal/sft.json").read_text()))


def test_the_bench_is_validated_versioned_in_mlflow_and_its_experts_cached(reveal_run):
    import mlflow

    project, records, report = reveal_run.project, reveal_run.records, reveal_run.bench_report
    assert len(records) == report["records"] > 0 and report["unreadable"] == []
    schema = json.loads((project / "data/08_reporting/reveal_bench/schema.json").read_text())
    assert schema["failed"] == {} and schema["records"] == len(records)
    dataset = json.loads((project / "data/08_reporting/reveal_bench/mlflow_dataset.json").read_text())
    runs = mlflow.search_runs(experiment_names=["genguard"], output_format="list",
                              filter_string="attributes.status = 'FINISHED'")
    logged = [(d.dataset.name, d.dataset.digest) for run in runs for d in run.inputs.dataset_inputs]
    assert (dataset["dataset"], dataset["digest"]) in logged
    # A rerun computes no expert reading again (cache by image hash) and rebuilds the same records.
    run_session(project, "reveal_bench")
    again = json.loads((project / "data/08_reporting/reveal_bench/report.json").read_text())
    assert again["expert_cache"]["misses"] == 0 and again["expert_cache"]["hits"] == report["expert_cache"]["misses"]
    rebuilt = [json.loads(line) for line in (project / reveal_run.bench["out_dir"] / "records.jsonl").read_text()
               .splitlines()]
    assert rebuilt == records


def test_sft_learns_the_format_and_grpo_logs_every_term_and_moves(reveal_run):
    """The wiring of both stages (the learning itself: tests/families/vlm/test_reveal_learning.py)."""
    metrics, grpo = reveal_run.metrics, reveal_run.grpo
    assert metrics["sft/format"] > 0.5 and metrics["bare/format"] == 0.0  # greedy, held out
    assert reveal_run.sft["history"][-1]["loss"] < 0.5 * reveal_run.sft["history"][0]["loss"]
    steps = grpo["history"]
    assert len(steps) == reveal_run.reveal["grpo"]["max_steps"]
    for term in TERMS:
        assert all(f"rewards/{term}/mean" in step for step in steps), term
    assert 0 < max(step["kl"] for step in steps) < 0.1  # GRPO moved the policy, and not far (beta 0.001)
    ledger = grpo["reward_ledger"]  # every term was called on every sample, and none failed
    assert {name.split("/", 1)[1] for name in ledger if name.startswith("reward_calls/")} == set(TERMS)
    assert all(ledger[f"reward_calls/{term}"] > 0 and ledger[f"reward_errors/{term}"] == 0 for term in TERMS)
    assert grpo["reward_terms"] == list(TERMS) and grpo["reward_weights"] == [1.0, 1.0, 0.1, 0.3, 0.2, 0.2]


def test_evaluation_reports_per_generator_accuracy_and_the_model_is_registered(reveal_run):
    import mlflow

    project = reveal_run.project
    board = pd.read_csv(project / "data/08_reporting/reveal/per_generator.csv")
    generators = {r["generator"] for r in reveal_run.records if r["split"] == "test"}
    assert set(board["policy"]) == {"bare", "sft", "grpo"}
    assert set(board["generator"]) == generators | {"mean"}
    assert board[["acc", "r_acc", "f_acc", "parse_failure_rate"]].notna().all().all()
    for name in ("judge/reward_errors/reasoning_match", "grpo/citation_rate", "grpo/rouge_l", "grpo/tokens_per_s",
                 "sft/sampled/total", "grpo/sampled/total", "grpo/curve/reward_gain", "grpo/curve/max_kl"):
        assert name in reveal_run.metrics
    registration = json.loads((project / "data/08_reporting/reveal/registration.json").read_text())
    assert registration["name"] == "genguard-reveal-test" and "candidate" in registration["aliases"]
    run = mlflow.get_run(registration["run_id"])
    assert {"grpo/reward", "grpo/kl", "sft/loss", "grpo/rewards/format/mean"} <= set(run.data.metrics)


def test_a_rerun_trains_nothing_and_a_changed_evaluation_only_re_evaluates(reveal_run, monkeypatch):
    """The stage folders are cached by what they were trained from: a rerun loads them, a changed evaluation
    block leaves their keys alone (only evaluation reruns)."""
    from genguard.pipelines.vlm import nodes

    project = reveal_run.project
    monkeypatch.chdir(project)

    def refuse(*args, **kwargs):
        raise AssertionError("a stage retrained although nothing it was trained from changed")

    monkeypatch.setattr(nodes, "run_sft", refuse)
    monkeypatch.setattr(nodes, "run_grpo", refuse)
    bench_dir = reveal_run.bench["out_dir"]
    policy = nodes.prepare_policy(reveal_run.records, {}, reveal_run.reveal)
    sft = nodes.coe_tuning(reveal_run.records, policy, reveal_run.reveal, bench_dir)
    grpo = nodes.r_grpo(reveal_run.records, sft, reveal_run.reveal, bench_dir)
    assert sft["cached"] and grpo["cached"]
    assert (sft["key"], grpo["key"]) == (reveal_run.sft["key"], reveal_run.grpo["key"])
    changed = {**reveal_run.reveal, "evaluation": {**reveal_run.reveal["evaluation"], "max_new_tokens": 7}}
    assert nodes.r_grpo(reveal_run.records, nodes.coe_tuning(reveal_run.records, policy, changed, bench_dir),
                        changed, bench_dir)["key"] == grpo["key"]
    # what GRPO's rewards read is part of its key: other expert evidence, another model
    edited = [{**r, "experts": {**r["experts"], "spectrum": {**r["experts"]["spectrum"], "score": 0.123}}}
              for r in reveal_run.records]
    assert nodes._bench_key(edited) != nodes._bench_key(reveal_run.records)
