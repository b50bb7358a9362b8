"""Held-out evaluation of a policy's completions: verdicts parsed from ``<answer>``, per-generator accuracy
through the core's group table, an unparsable answer counted as wrong (never a guess)."""

import pytest

from genguard.families.vlm.evaluation import completion_table, parse_verdict, per_generator

SOLUTION = "<think>1. spectrum: periodic peaks.\n2. noise_residual: smooth.\n3. So it is generated.</think>"


def _record(i: int, generator: str, label: int) -> dict:
    return {"id": f"r{i}", "generator": generator, "label": label, "experts": {"spectrum": {}},
            "solution": f"{SOLUTION}<answer>{label}</answer>"}


def test_per_generator_accuracy_counts_an_unparsable_answer_as_wrong():
    records = [_record(0, "a", 1), _record(1, "a", 0), _record(2, "b", 0), _record(3, "b", 1)]
    completions = [f"{SOLUTION}<answer>1</answer>", f"{SOLUTION}<answer>maybe</answer>",
                   f"{SOLUTION}<answer>0</answer>", f"{SOLUTION}<answer>0</answer>"]
    table = completion_table(records, completions)
    assert table["verdict"].tolist()[::2] == [1, 0] and table["parsed"].tolist() == [True, False, True, True]
    board = per_generator(table).set_index("generator")
    assert board.loc["a", ["acc", "r_acc", "f_acc", "parse_failure_rate"]].tolist() == [0.5, 0.0, 1.0, 0.5]
    assert board.loc["b", ["acc", "r_acc", "f_acc", "parse_failure_rate"]].tolist() == [0.5, 1.0, 0.0, 0.0]
    assert board.loc["mean", "acc"] == 0.5 and board.loc["mean", "parse_failure_rate"] == 0.25
    assert table["citation_rate"].tolist()[0] == pytest.approx(1 / 3)  # one of three steps names an expert


def test_only_a_zero_or_one_answer_is_a_verdict():
    assert [parse_verdict(f"<think>x</think><answer>{a}</answer>") for a in ("1", " 0 ", "yes", "10")] == \
        [1, 0, None, None]
    assert parse_verdict("<think>x</think>") is None
