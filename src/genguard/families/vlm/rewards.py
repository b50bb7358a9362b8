"""REVEAL's R-GRPO reward terms as TRL reward functions, with an error ledger.

After REVEAL (Cao et al., "REVEAL: Reasoning-Enhanced Forensic Evidence Analysis for Explainable
AI-Generated Image Detection", arXiv 2511.23158) and its released reward plugin (GitHub
``TrustMedia-zju/REVEAL``, ``examples/train/grpo/plugin/plugin.py``, Apache-2.0); re-implemented from the
spec, not copied. Total reward ``R_acc + R_fmt + 0.1 R_step + 0.3 R_sem + 0.2 R_vis + 0.2 R_logic``
(max 2.8), one TRL reward function per term so that TRL logs each as ``rewards/<term>/mean``.

Every function takes TRL's reward signature ``f(prompts=..., completions=..., completion_ids=...,
**columns)`` and returns one ``float | None`` per completion. ``None`` (TRL: NaN, skipped in the weighted
sum) means the term could not be computed for that sample -- a judge that raised -- and is counted by name
in the :class:`RewardLedger`; nothing ever raises through a reward function (that would kill a GRPO step).

Deliberate departures from the released code, all from the spec's review note:

* format: the released strict end ``(?![\\s\\S])``, so a trailing newline fails (``$`` would accept it);
* steps: counts line-anchored list markers ``^\\s*\\d+\\.\\s`` instead of any three standalone integers,
  and the step splitter is line-anchored too, so decimals such as ``0.85`` neither count nor split a
  step. Steps must therefore start on their own line (``<think>1. ...\\n2. ...``);
* reasoning_match: an unparsable judge answer scores 0.5 (as released: parse failure -> 0 -> 0.5) and is
  counted; a judge that raises gives ``None`` instead of the released silent 0;
* logic: the shuffle never returns the original order when two or more non-final steps can move (the
  released ``random.sample`` can, which makes the term noisy), and it is seeded per completion.
"""

from __future__ import annotations

import functools
import inspect
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from genguard.families.vlm.chain_text import (  # noqa: F401  (re-exported: the reward API)
    ANSWER_PATTERN,
    FORMAT_PATTERN,
    MIN_STEPS,
    STEP_MARKER,
    THINK_PATTERN,
    ParsedCompletion,
    answer_class,
    class_votes,
    completion_text,
    count_steps,
    image_path,
    join_steps,
    parse_completion,
    shuffle_steps,
    split_steps,
    text_class,
)

if TYPE_CHECKING:
    from genguard.families.vlm.judges import Judge

_JUDGE_SCORE = {1: 1.0, 0: 0.5, -1: 0.0}  # released mapping of a judge's 1 / 0 / -1 to a reward


# ----------------------------------------------------------------------------------------------------------
# Error accounting


class RewardLedger:
    """Per term: calls, samples, ``None`` rewards (judge errors, first messages kept), parse failures."""

    def __init__(self, max_messages: int = 5) -> None:
        self.max_messages = max_messages
        self.calls: Counter = Counter()
        self.samples: Counter = Counter()
        self.errors: Counter = Counter()
        self.parse_failures: Counter = Counter()
        self.messages: dict[str, list[str]] = {}

    def record_call(self, term: str, n_samples: int) -> None:
        self.calls[term] += 1
        self.samples[term] += n_samples

    def record_error(self, term: str, exc: BaseException) -> None:
        self.errors[term] += 1
        kept = self.messages.setdefault(term, [])
        if len(kept) < self.max_messages:
            kept.append(f"{type(exc).__name__}: {exc}")

    def record_parse_failure(self, term: str) -> None:
        self.parse_failures[term] += 1

    def summary(self) -> dict[str, float]:
        """Flat metrics: ``reward_calls/<term>``, ``reward_samples/…``, ``reward_errors/…``, ``…_rate/…``."""
        out: dict[str, float] = {}
        for term in sorted(set(self.calls) | set(self.errors) | set(self.parse_failures)):
            n = self.samples[term]
            out[f"reward_calls/{term}"] = float(self.calls[term])
            out[f"reward_samples/{term}"] = float(n)
            out[f"reward_errors/{term}"] = float(self.errors[term])
            out[f"reward_parse_failures/{term}"] = float(self.parse_failures[term])
            out[f"reward_error_rate/{term}"] = self.errors[term] / n if n else 0.0
        return out


def _run(term: str, completions: Sequence[Any], ledger: RewardLedger | None, score: Callable[[int, Any], Any],
         log_metric: Callable[[str, float], None] | None = None) -> list[float | None]:
    """Score each sample; an exception becomes ``None`` for that sample and an error in the ledger."""
    ledger = ledger if ledger is not None else RewardLedger()
    ledger.record_call(term, len(completions))
    errors_before = ledger.errors[term]
    out: list[float | None] = []
    for i, completion in enumerate(completions):
        try:
            out.append(score(i, parse_completion(completion)))
        except Exception as exc:  # noqa: BLE001 -- a reward function must never raise into the GRPO step
            ledger.record_error(term, exc)
            out.append(None)
    if log_metric is not None and completions:
        log_metric(f"reward_errors/{term}", (ledger.errors[term] - errors_before) / len(completions))
    return out


def _column(values: Sequence[Any] | None, i: int) -> Any:
    return None if values is None else values[i]


def _judged(term: str, value: Any, ledger: RewardLedger | None) -> float:
    """A judge's 1 / 0 / -1 as 1 / 0.5 / 0; anything else is a parse failure scoring 0.5 (as released)."""
    if value in _JUDGE_SCORE and not isinstance(value, bool):
        return _JUDGE_SCORE[value]
    if ledger is not None:
        ledger.record_parse_failure(term)
    return 0.5


@functools.lru_cache(maxsize=1)
def default_judge() -> Judge:
    from genguard.families.vlm.judges import build_judge

    return build_judge({"kind": "proxy"})


# ----------------------------------------------------------------------------------------------------------
# The six terms (TRL reward signature)


def _reference_answer(solution: str | None, label: Any) -> str | None:
    if solution is not None:
        ref = completion_text(solution)
        match = ANSWER_PATTERN.search(ref)
        return match.group(1).strip() if match else ref.strip()
    return None if label is None else str(int(label))


def accuracy_reward(completions, solution=None, label=None, ledger=None, log_metric=None, **_) -> list:
    """R_acc: the stripped ``<answer>`` (whole text without the tag, as released) equals the reference's."""

    def score(i, parsed):
        ref = _reference_answer(_column(solution, i), _column(label, i))
        answer = parsed.answer if parsed.answer is not None else parsed.text.strip()
        return float(ref is not None and answer == ref)

    return _run("accuracy", completions, ledger, score, log_metric)


def format_reward(completions, ledger=None, log_metric=None, **_) -> list:
    """R_fmt: the whole completion matches :data:`FORMAT_PATTERN` (nothing after ``</answer>``)."""
    return _run("format", completions, ledger, lambda i, parsed: float(parsed.well_formed), log_metric)


def steps_reward(completions, ledger=None, log_metric=None, **_) -> list:
    """R_step: at least three line-anchored numbered steps in ``<think>`` (released: any three integers)."""
    return _run("steps", completions, ledger, lambda i, p: float(count_steps(p.think) >= MIN_STEPS),
                log_metric)


def reasoning_match_reward(completions, solution=None, judge=None, ledger=None, log_metric=None, **_) -> list:
    """R_sem: ``judge.consistency(T_c, T_s)`` 1 / 0 / -1 -> 1 / 0.5 / 0; unparsable -> 0.5; raise -> None."""
    judge = judge or default_judge()

    def score(i, parsed):
        if _column(solution, i) is None:
            raise ValueError("no reference solution for this sample")
        reference = parse_completion(_column(solution, i)).think
        return _judged("reasoning_match", judge.consistency(parsed.think, reference), ledger)

    return _run("reasoning_match", completions, ledger, score, log_metric)


def evidence_faithfulness_reward(completions, experts=None, image=None, images=None, judge=None, ledger=None,
                                 log_metric=None, **_) -> list:
    """R_vis: ``judge.faithfulness(T_c, experts, image_path)`` 1 / 0 / -1 -> 1 / 0.5 / 0."""
    judge = judge or default_judge()

    def score(i, parsed):
        path = image_path(_column(image, i) if image is not None else _column(images, i))
        verdict = judge.faithfulness(parsed.think, _column(experts, i) or {}, path)
        return _judged("evidence_faithfulness", verdict, ledger)

    return _run("evidence_faithfulness", completions, ledger, score, log_metric)


def _takes_answer(method: Callable) -> bool:
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return "answer" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def logic_reward(completions, judge=None, ledger=None, seed: int = 0, log_metric=None, **_) -> list:
    """R_logic (order sensitivity): shuffle all steps but the conclusion, ask whether the shuffled chain still
    supports it: -1 (still fully) -> 0, 0 (slightly affected) -> 0.5, 1 (inconsistent) -> 1. <= 2 steps -> 0.

    The shuffle is seeded by ``seed`` and the completion text. Judges whose ``order_sensitivity`` accepts an
    ``answer`` keyword (the built-in ones) also get the ``<answer>`` content.
    """
    judge = judge or default_judge()
    pass_answer = _takes_answer(judge.order_sensitivity)

    def score(i, parsed):
        steps = split_steps(parsed.think)
        if len(steps) <= 2:
            return 0.0
        shuffled = join_steps(shuffle_steps(steps, random.Random(f"{seed}:{parsed.think}")))
        extra = {"answer": parsed.answer} if pass_answer else {}
        value = judge.order_sensitivity(join_steps(steps), shuffled, **extra)
        if value in _JUDGE_SCORE and not isinstance(value, bool):
            return {-1: 0.0, 0: 0.5, 1: 1.0}[value]
        return _judged("logic", None, ledger)

    return _run("logic", completions, ledger, score, log_metric)


REWARD_FUNCTIONS: dict[str, Callable[..., list]] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "steps": steps_reward,
    "reasoning_match": reasoning_match_reward,
    "evidence_faithfulness": evidence_faithfulness_reward,
    "logic": logic_reward,
}
DEFAULT_WEIGHTS: dict[str, float] = {"accuracy": 1.0, "format": 1.0, "steps": 0.1, "reasoning_match": 0.3,
                                     "evidence_faithfulness": 0.2, "logic": 0.2}
_JUDGED = {"reasoning_match", "evidence_faithfulness", "logic"}


def build_reward_functions(weights: dict[str, float] | None, judge: Judge | None = None,
                           ledger: RewardLedger | None = None, seed: int = 0
                           ) -> tuple[list[Callable[..., list]], list[float], list[str]]:
    """TRL-ready reward callables (``__name__`` = term), their weights and names, in :data:`REWARD_FUNCTIONS`
    order; terms with weight 0 or absent are left out. ``None`` weights mean :data:`DEFAULT_WEIGHTS`."""
    weights = DEFAULT_WEIGHTS if weights is None else weights
    unknown = set(weights) - set(REWARD_FUNCTIONS)
    if unknown:
        raise KeyError(f"unknown reward terms {sorted(unknown)}; known: {list(REWARD_FUNCTIONS)}")
    judge = judge or (default_judge() if _JUDGED & {k for k, w in weights.items() if w} else None)
    ledger = ledger if ledger is not None else RewardLedger()
    funcs, kept_weights, names = [], [], []
    for name, term in REWARD_FUNCTIONS.items():
        weight = float(weights.get(name) or 0.0)
        if not weight:
            continue
        bound = {"ledger": ledger} | ({"judge": judge} if name in _JUDGED else {}) | (
            {"seed": seed} if name == "logic" else {})

        def reward(prompts=None, completions=None, _term=term, _bound=bound, **kwargs):
            return _term(completions=completions, **{**kwargs, **_bound})

        reward.__name__ = reward.__qualname__ = name
        reward.__doc__ = term.__doc__
        funcs.append(reward)
        kept_weights.append(weight)
        names.append(name)
    return funcs, kept_weights, names


def score_completions(completions: Sequence[Any], records: Sequence[dict],
                      funcs: Sequence[Callable[..., list]], names: Sequence[str] | None = None,
                      weights: Sequence[float] | None = None, prompts: Sequence[Any] | None = None):
    """One row per completion, one column per term plus ``total``: the weighted sum skipping ``None`` (as
    TRL), NaN when every term is ``None``. ``records`` are the dataset rows aligned with ``completions``;
    ``names`` default to the functions' ``__name__``, ``weights`` to :data:`DEFAULT_WEIGHTS` (else 1)."""
    import numpy as np
    import pandas as pd

    if len(records) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(records)} records")
    names = list(names) if names is not None else [f.__name__ for f in funcs]
    weights = list(weights) if weights is not None else [DEFAULT_WEIGHTS.get(name, 1.0) for name in names]
    reserved = {"prompt", "prompts", "completion", "completions", "completion_ids"}
    keys = sorted({key for record in records for key in record} - reserved)
    columns = {key: [record.get(key) for record in records] for key in keys}
    prompts = list(prompts) if prompts is not None else [record.get("prompt") for record in records]
    table = pd.DataFrame({
        name: [np.nan if r is None else float(r) for r in func(prompts=prompts, completions=list(completions),
                                                                completion_ids=None, **columns)]
        for name, func in zip(names, funcs)})
    values = table[names].to_numpy(dtype=float) if names else np.zeros((len(completions), 0))
    total = np.nansum(values * np.asarray(weights, dtype=float), axis=1)
    total[np.isnan(values).all(axis=1)] = np.nan
    table["total"] = total
    return table
