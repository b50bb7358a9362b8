"""REVEAL reward terms (genguard.families.vlm.rewards) and judges (genguard.families.vlm.judges)."""

import math
import re
import time

import numpy as np
import pytest

from genguard.families.vlm.judges import (
    JUDGES,
    JudgeError,
    LMJudge,
    ProxyJudge,
    build_judge,
    parse_judge_answer,
)
from genguard.families.vlm.rewards import (
    DEFAULT_WEIGHTS,
    REWARD_FUNCTIONS,
    RewardLedger,
    accuracy_reward,
    build_reward_functions,
    count_steps,
    evidence_faithfulness_reward,
    format_reward,
    logic_reward,
    parse_completion,
    reasoning_match_reward,
    score_completions,
    split_steps,
    steps_reward,
)

STEPS = ("1. frequency expert: the spectrum shows periodic peaks at the Nyquist corners, a sign of "
         "AI-generated upsampling.\n"
         "2. noise expert: the SRM residual energy is 0.85 of its maximum, which points to a synthetic "
         "image.\n"
         "3. verification: both findings above agree; 2 of 2 experts flag the image as fake.\n"
         "4. conclusion: the image is AI-generated.")
SOLUTION = f"<think>{STEPS}</think><answer>1</answer>"
EXPERTS = {"frequency": {"verdict": "fake", "text": "periodic spectral peaks", "score": 0.91},
           "noise": {"verdict": "fake", "text": "high SRM residual energy", "score": 0.8},
           "shadow": {"verdict": "uncertain", "text": "no shadows", "score": 0.5}}
INDEPENDENT = ("1. frequency expert: periodic peaks, typical of AI-generated images.\n"
               "2. noise expert: residual energy looks synthetic.\n"
               "3. lighting looks flat.\n"
               "4. conclusion: the image is AI-generated.")


def bag_of_words(texts):
    """A deterministic stand-in for MiniLM: hashed word counts."""
    out = np.zeros((len(texts), 64))
    for row, text in enumerate(texts):
        for word in re.findall(r"[a-z]+", text.lower()):
            out[row, sum(map(ord, word)) % 64] += 1.0
    return out


class ScriptedJudge:
    """A judge whose consistency answers (or raises) come from a script; the rest delegate to the proxy."""

    name = "scripted"

    def __init__(self, *answers):
        self.answers = list(answers)
        self.proxy = ProxyJudge(embedder=bag_of_words)

    def consistency(self, think_a, think_b):
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def faithfulness(self, think, experts, image_path):
        return self.proxy.faithfulness(think, experts, image_path)

    def order_sensitivity(self, original, shuffled, answer=None):
        return self.proxy.order_sensitivity(original, shuffled, answer)


@pytest.fixture
def judge():
    return ProxyJudge(embedder=bag_of_words)


def test_accuracy_verdicts_and_missing_tag():
    completions = [SOLUTION, SOLUTION.replace("<answer>1", "<answer>0"), f"<think>{STEPS}</think> 1",
                   "<think>x</think><answer> 1 </answer>"]
    assert accuracy_reward(completions, solution=[SOLUTION] * 4) == [1.0, 0.0, 0.0, 1.0]
    # without a tag the whole text is compared (as released); the label is the fallback reference
    assert accuracy_reward(["1", "0"], label=[1, 1]) == [1.0, 0.0]


def test_format_is_strict():
    bad = [f"<think>{STEPS}<answer>1</answer>",  # missing </think>
           SOLUTION + "\n",  # trailing newline (review note 4)
           "Sure. " + SOLUTION,  # text before <think>
           f"<think>{STEPS}</think>"]  # no answer
    assert format_reward([SOLUTION, SOLUTION.replace("</think><answer>", "</think>\n<answer>")]) == [1.0, 1.0]
    assert format_reward(bad) == [0.0] * 4


def test_conversational_completions_score_like_strings(judge):
    parts = [{"role": "assistant", "content": [{"type": "text", "text": SOLUTION[:20]},
                                               {"type": "text", "text": SOLUTION[20:]}]}]
    for completion in ([{"role": "assistant", "content": SOLUTION}], parts):
        assert parse_completion(completion) == parse_completion(SOLUTION)
        funcs, _, _ = build_reward_functions(DEFAULT_WEIGHTS, judge, RewardLedger(), seed=0)
        for f in funcs:
            kw = {"solution": [SOLUTION], "experts": [EXPERTS], "image": ["x.png"]}
            assert f(completions=[completion], **kw) == f(completions=[SOLUTION], **kw), f.__name__


def test_steps_are_line_anchored():
    assert steps_reward(["<think>1. a\n2. b\n3. c</think><answer>1</answer>"]) == [1.0]
    decimals = "<think>1. score 0.85 and 12 and 7\n2. so fake</think><answer>1</answer>"
    assert count_steps(parse_completion(decimals).think) == 2
    assert steps_reward([decimals, "<think>1. a 2. b 3. c</think><answer>1</answer>"]) == [0.0, 0.0]
    steps = split_steps("intro\n1. energy 0.85 high\n  2. peaks\n3. fake")
    assert steps == ["energy 0.85 high", "peaks", "fake"]


def test_logic_proxy_ordered_chain_beats_independent_steps(judge):
    contradicting = SOLUTION.replace("the image is AI-generated.", "the image is real.")
    two_steps = "<think>1. frequency: fake.\n2. conclusion: AI-generated.</think><answer>1</answer>"
    independent = f"<think>{INDEPENDENT}</think><answer>1</answer>"
    rewards = logic_reward([SOLUTION, independent, contradicting, two_steps], judge=judge, seed=0)
    assert rewards == [1.0, 0.5, 0.0, 0.0]
    # a conclusion that agrees with itself but not with the <answer> is a contradiction too
    assert logic_reward([SOLUTION.replace("<answer>1", "<answer>0")], judge=judge) == [0.0]
    # deterministic and order independent (seeded per completion)
    assert logic_reward([independent, SOLUTION], judge=judge, seed=0) == [0.5, 1.0]


def test_logic_shuffle_keeps_conclusion_and_moves_steps():
    seen = []

    class Recorder(ProxyJudge):
        def order_sensitivity(self, original, shuffled, answer=None):
            seen.append((original, shuffled, answer))
            return 1

    logic_reward([SOLUTION], judge=Recorder(embedder=bag_of_words), seed=3)
    original, shuffled, answer = seen[0]
    assert answer == "1" and original != shuffled
    assert split_steps(shuffled)[-1] == split_steps(original)[-1]
    assert sorted(split_steps(shuffled)) == sorted(split_steps(original))


def test_evidence_faithfulness_restating_and_contradicting(judge):
    contradicting = SOLUTION.replace("points to a synthetic image", "points to a real photograph")
    partial = SOLUTION.replace("2. noise expert: the SRM", "2. the SRM")
    negated = SOLUTION.replace("a sign of AI-generated upsampling", "so it is not AI-generated")
    rewards = evidence_faithfulness_reward([SOLUTION, contradicting, partial, negated], experts=[EXPERTS] * 4,
                                           image=["a.png"] * 4, judge=judge)
    assert rewards == [1.0, 0.0, 0.5, 0.0]
    assert judge.faithfulness(STEPS, {"shadow": EXPERTS["shadow"]}, None) == 0  # nothing to check


def test_unparsable_judge_answer_scores_half_and_is_counted():
    ledger = RewardLedger()
    rewards = reasoning_match_reward([SOLUTION, SOLUTION], solution=[SOLUTION] * 2,
                                     judge=ScriptedJudge(None, 1), ledger=ledger)
    assert rewards == [0.5, 1.0]
    summary = ledger.summary()
    assert summary["reward_parse_failures/reasoning_match"] == 1
    assert summary["reward_errors/reasoning_match"] == 0 and summary["reward_samples/reasoning_match"] == 2
    assert parse_judge_answer("-1") == -1 and parse_judge_answer(" 0.") == 0
    assert parse_judge_answer("yes") is None and parse_judge_answer("7") is None


def test_raising_judge_gives_none_and_is_named_other_terms_unaffected():
    ledger = RewardLedger()
    judge = ScriptedJudge(JudgeError("judge server down"), -1)
    funcs, _, names = build_reward_functions(DEFAULT_WEIGHTS, judge, ledger, seed=0)
    kw = {"prompts": ["p", "p"], "completion_ids": None, "solution": [SOLUTION] * 2, "experts": [EXPERTS] * 2,
          "image": ["a.png"] * 2, "label": [1, 1], "trainer_state": None}
    out = {name: f(completions=[SOLUTION, SOLUTION], **kw) for name, f in zip(names, funcs)}
    assert out["reasoning_match"] == [None, 0.0]
    assert out["accuracy"] == out["format"] == out["steps"] == out["evidence_faithfulness"] == out["logic"]
    assert out["accuracy"] == [1.0, 1.0]
    summary = ledger.summary()
    assert summary["reward_errors/reasoning_match"] == 1
    assert summary["reward_error_rate/reasoning_match"] == 0.5
    assert ledger.messages["reasoning_match"] == ["JudgeError: judge server down"]
    assert summary["reward_errors/accuracy"] == 0 and summary["reward_parse_failures/reasoning_match"] == 0


def test_reference_scores_max_total_and_trl_names(judge):
    funcs, weights, names = build_reward_functions(DEFAULT_WEIGHTS, judge, RewardLedger(), seed=0)
    assert names == list(REWARD_FUNCTIONS) == [f.__name__ for f in funcs]
    assert weights == [1.0, 1.0, 0.1, 0.3, 0.2, 0.2]
    bad = "<think>1. it looks real.</think><answer>0</answer>\n"
    table = score_completions([SOLUTION, bad], [{"solution": SOLUTION, "label": 1, "experts": EXPERTS,
                                                 "image": "a.png"}] * 2, funcs, names)
    assert list(table.columns) == names + ["total"]
    assert math.isclose(table["total"][0], 2.8)
    assert table.loc[1, "total"] < 0.5
    _, few_weights, few_names = build_reward_functions({"accuracy": 1.0, "steps": 0.0, "format": 0.5}, judge)
    assert few_names == ["accuracy", "format"] and few_weights == [1.0, 0.5]
    with pytest.raises(KeyError, match="unknown reward terms"):
        build_reward_functions({"acc": 1.0}, judge)


def test_score_completions_total_skips_none():
    funcs, weights, names = build_reward_functions({"accuracy": 1.0, "reasoning_match": 0.3},
                                                   ScriptedJudge(RuntimeError("boom")))
    table = score_completions([SOLUTION], [{"solution": SOLUTION}], funcs, names, weights)
    assert math.isnan(table["reasoning_match"][0]) and table["total"][0] == 1.0


def test_lm_judge_prompts_parse_and_cap(judge):
    prompts = []

    def generate(prompt):
        prompts.append(prompt)
        return {0: " 1", 1: "-1 because", 2: "maybe"}[len(prompts) - 1]

    lm = build_judge({"kind": "lm", "generate_fn": generate})
    assert isinstance(lm, LMJudge) and lm.max_new_tokens == 4 and set(JUDGES) >= {"lm", "proxy"}
    assert lm.consistency("a", "b") == 1
    assert lm.faithfulness("think", EXPERTS, "a.png") == -1
    assert lm.order_sensitivity("1. a", "1. b", answer="1") is None
    assert "high SRM residual energy" in prompts[1] and "verdict fake" in prompts[1]
    assert all("1, 0 or -1" in p for p in prompts)
    with pytest.raises(JudgeError):
        build_judge({"kind": "lm"})
    assert build_judge({"thresholds": [0.9, 0.5], "embedder": bag_of_words}).thresholds == (0.9, 0.5)


def test_proxy_consistency_thresholds(judge):
    assert judge.consistency(STEPS, STEPS) == 1
    assert judge.consistency(STEPS, "") == -1
    assert judge.consistency(STEPS, STEPS.replace("is AI-generated.", "is real.")) == -1  # opposite ends
    assert judge.consistency("red green blue", "alpha beta gamma delta") == -1


@pytest.mark.slow
def test_real_minilm_offline_paraphrase_beats_unrelated():
    start = time.perf_counter()
    proxy = ProxyJudge()
    base = "The frequency spectrum shows periodic peaks, so the image is AI-generated."
    paraphrase = "Periodic peaks appear in the image's Fourier spectrum, which means it was generated by AI."
    unrelated = "The recipe needs two cups of flour and a pinch of salt."
    assert proxy.similarity(base, paraphrase) > proxy.similarity(base, unrelated) + 0.2
    assert proxy.consistency(base, base) == 1
    assert time.perf_counter() - start < 15


def test_proxy_judge_embeds_each_distinct_text_once_and_keeps_a_bounded_table():
    embedded = []

    def counting(texts):
        embedded.extend(texts)
        return bag_of_words(texts)

    judge = ProxyJudge(embedder=counting)
    reference = "<think>1. a. 2. b. 3. c.</think><answer>1</answer>"
    first = judge.similarity("the spectrum shows peaks", reference)
    for completion in ("the noise is flat", "texture repeats", "the spectrum shows peaks"):
        judge.similarity(completion, reference)
    assert embedded.count(reference) == 1 and embedded.count("the spectrum shows peaks") == 1
    assert judge.similarity("the spectrum shows peaks", reference) == first
    judge.max_cached_texts = 2
    judge.similarity("one more", "and another")
    assert len(judge._embedded) == 2
