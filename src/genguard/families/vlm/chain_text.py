"""The chain-of-evidence text format shared by the writer, the rewards, the judges and the evaluation:
``<think>1. ...\n2. ...\nn. ...</think><answer>1|0</answer>`` (1 = AI-generated, 0 = real, the released
inference convention), its parsing, its numbered steps and the class words of a verdict.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# (?s) inline, so that FORMAT_PATTERN.pattern keeps DOTALL when used elsewhere (e.g. a data-quality regex).
FORMAT_PATTERN = re.compile(r"(?s)^<think>.*?</think>\s*<answer>.*?</answer>(?![\s\S])")
THINK_PATTERN = re.compile(r"<think>(.*?)</think>", re.DOTALL)
ANSWER_PATTERN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# Line-anchored step markers ("k. " at the start of a line; the number is group 1). The released splitter
# (\d+)\.\s* matches anywhere, so "0.85" or "ratio 12." would start new steps.
STEP_MARKER = re.compile(r"^[ \t]*(\d+)\.\s", re.MULTILINE)
MIN_STEPS = 3

# Class words of the two verdicts; a negated word ("not AI-generated") counts for the other class.
_CLASS_WORDS = re.compile(
    r"\b(?:(?P<fake>ai[\s-]generated|generated|synthetic|synthesi[sz]ed|fake|artificial|manipulated|forged|"
    r"forgery|tampered)|"
    r"(?P<real>real|authentic|genuine|natural|pristine|unmanipulated|camera[\s-]captured))\b",
    re.IGNORECASE,
)
_NEGATION = re.compile(r"(?:\bnot|\bno|\bnon|n't|\bnever)[\s-]+(?:(?:an?|the|be|been)\s+)?$", re.IGNORECASE)
_OPPOSITE = {"fake": "real", "real": "fake"}


def completion_text(completion: Any) -> str:
    """A completion as text: a string, or (conversational) the assistant messages' contents joined."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    parts = []
    for message in completion:
        content = message.get("content", "") if isinstance(message, dict) else message
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(content if isinstance(content, str) else str(content))
    return "".join(parts)


@dataclass(frozen=True)
class ParsedCompletion:
    text: str
    think: str  # "" when the tag is missing (as released)
    answer: str | None  # stripped <answer> content, None when the tag is missing
    well_formed: bool  # matches FORMAT_PATTERN


def parse_completion(completion: Any) -> ParsedCompletion:
    text = completion_text(completion)
    think, answer = THINK_PATTERN.search(text), ANSWER_PATTERN.search(text)
    return ParsedCompletion(text, think.group(1).strip() if think else "",
                            answer.group(1).strip() if answer else None, bool(FORMAT_PATTERN.match(text)))


def count_steps(think: str) -> int:
    """Line-anchored list markers (``1. ``) in a reasoning text; ``0.85`` or ``12 and 7`` do not count."""
    return len(STEP_MARKER.findall(think or ""))


def split_steps(think: str) -> list[str]:
    """The numbered steps of a reasoning text, markers removed; text before the first marker is dropped."""
    starts = [m for m in STEP_MARKER.finditer(think or "")]
    ends = [m.start() for m in starts[1:]] + [len(think or "")]
    return [think[m.end():end].strip() for m, end in zip(starts, ends)]


def join_steps(steps: Sequence[str]) -> str:
    return "\n".join(f"{i}. {step}" for i, step in enumerate(steps, 1))


def class_votes(text: str) -> Counter:
    """Occurrences of fake/real class words in ``text``, a negated word counting for the opposite class."""
    votes: Counter = Counter()
    for match in _CLASS_WORDS.finditer(text or ""):
        cls = "fake" if match.group("fake") else "real"
        negated = _NEGATION.search(text[max(0, match.start() - 16):match.start()])
        votes[_OPPOSITE[cls] if negated else cls] += 1
    return votes


def text_class(text: str) -> str | None:
    """"fake" / "real" when that class's words are the majority in ``text``, else None (none or a tie)."""
    votes = class_votes(text)
    if votes["fake"] == votes["real"]:
        return None
    return "fake" if votes["fake"] > votes["real"] else "real"


def answer_class(answer: str | None) -> str | None:
    """The class of an ``<answer>``: "1" -> fake, "0" -> real (released convention), else its class words."""
    if answer is None:
        return None
    answer = answer.strip()
    return {"1": "fake", "0": "real"}.get(answer) or text_class(answer)


def shuffle_steps(steps: Sequence[str], rng: random.Random) -> list[str]:
    """Permute all steps but the last (the conclusion); never the identity when two or more can move."""
    head, tail = list(steps[:-1]), list(steps[-1:])
    shuffled = rng.sample(head, len(head))
    if len(head) >= 2 and shuffled == head:
        shuffled = shuffled[1:] + shuffled[:1]
    return shuffled + tail


def image_path(image: Any) -> str | None:
    """The path in an ``image``/``images`` cell: a path, ``{"path": ...}``, a list of those, a PIL image."""
    if isinstance(image, (list, tuple)):
        return image_path(image[0]) if image else None
    if isinstance(image, dict):
        return image.get("path")
    if isinstance(image, str):
        return image
    return getattr(image, "filename", None) or None
