"""Chain-of-evidence (CoE) synthesis and quality control (REVEAL, arXiv 2511.23158; spec §1.4-1.5).

REVEAL-Bench consolidates the experts' evidence into numbered reasoning steps in three phases -- discovery (one
step per informative expert), verification (cross-checking experts, down-weighting the dissenters) and a
concluding step -- wrapped as ``<think>1. ...\\nn. ...</think><answer>1</answer>`` (1 = AI-generated, 0 = real,
the released inference convention). The paper uses a large VLM as synthesiser; here :class:`TemplateWriter`
writes the steps from a seeded phrase bank and :class:`LLMWriter` optionally paraphrases them with a small
causal LM, keeping a template step whenever a paraphrase loses its citation or invents a number.

Numbers are written as integers or percentages only: the released step splitter ``(\\d+)\\.\\s*`` cuts
"0.85" into two steps, which corrupts the shuffle (logic) reward and inflates the step reward.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from genguard.families.vlm.chain_text import (
    ANSWER_PATTERN,
    FORMAT_PATTERN,
    STEP_MARKER,
    THINK_PATTERN,
    split_steps,
)
from genguard.families.vlm.experts import ExpertEvidence

PROMPT = ("Is this image real or AI-generated? Answer 1 for generated and 0 for real. Examine lighting, "
          "texture, shadows, edges and fine details for signs of synthesis or of authenticity. Put a numbered "
          "step-by-step analysis ending in a conclusion inside <think></think> and only the digit inside "
          "<answer></answer>.")

CLASS_WORDS = {1: ("generated", "synthetic", "fake"), 0: ("real", "authentic", "genuine")}
VERDICT_CLASS = {"fake": 1, "real": 0}
_CLASS_NAME = {1: "generated", 0: "real"}


def _has_words(text: str, words: Sequence[str]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE) for w in words)


def _names(text: str, experts: Sequence[str]) -> list[str]:
    return [n for n in experts if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]


def check_trace(text: str, evidence: dict[str, ExpertEvidence], label: int) -> list[str]:
    """QC problems of one trace (spec §1.4): format, conclusion vs label, contradictions, too few steps."""
    problems = []
    if not FORMAT_PATTERN.match(text):
        problems.append("format: not exactly <think>...</think><answer>...</answer> (nothing may follow)")
    answer = ANSWER_PATTERN.search(text)
    if answer is None or answer.group(1).strip() != str(label):
        problems.append(f"answer {answer.group(1).strip() if answer else None!r} is not the label {label}")
    think = THINK_PATTERN.search(text)
    steps = split_steps(think.group(1) if think else "")
    numbers = [int(m.group(1)) for m in STEP_MARKER.finditer(think.group(1) if think else "")]
    if len(steps) < 3:
        problems.append(f"only {len(steps)} numbered steps (at least 3 needed)")
    elif numbers != list(range(1, len(steps) + 1)):
        problems.append(f"steps are numbered {numbers}, not 1..{len(steps)}")
    if steps and not (_has_words(steps[-1], CLASS_WORDS[label]) and not _has_words(steps[-1], CLASS_WORDS[1 - label])):
        problems.append(f"the last step does not conclude {_CLASS_NAME[label]!r}")
    for k, step in enumerate(steps, 1):
        if re.search(r"\d\.", step):
            problems.append(f"step {k} has a digit followed by a period (a decimal), which the released splitter cuts")
        # Per clause, so "X and Y agree it is generated; Z points the other way" does not accuse Z.
        for clause in re.split(r";|[.!?](?:\s|$)", step):
            for name in _names(clause, list(evidence)):
                own = VERDICT_CLASS.get(evidence[name].verdict)
                if own is not None and _has_words(clause, CLASS_WORDS[1 - own]) and not _has_words(
                        clause, CLASS_WORDS[own]):
                    problems.append(f"step {k} contradicts {name}'s verdict {evidence[name].verdict!r}")
    return problems


@dataclass
class CoE:
    """One chain of evidence: steps ``{idx, phase, cites, text}``, the conclusion digit, writer and QC."""
    steps: list[dict]
    conclusion: int
    writer: str
    qc: dict = field(default_factory=dict)

    def think(self) -> str:
        return "\n".join(f"{s['idx']}. {s['text']}" for s in self.steps)

    def text(self) -> str:
        return f"<think>{self.think()}</think><answer>{self.conclusion}</answer>"

    def to_dict(self) -> dict:
        return asdict(self)


def _mean_confidence(group: Sequence[ExpertEvidence]) -> int:
    return round(100 * sum(e.confidence for e in group) / len(group)) if group else 0


def _list(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


_DISCOVERY = ("{text}.", "Looking at {expert}: {finding}.", "The {expert} expert reports that {finding}.",
              "Evidence from {expert} shows that {finding}.")
_AGREE = ("Cross-checking the views, {n} of {m} experts ({names}) agree that the image looks {word}",
          "{names} point the same way: {n} of {m} experts read the image as {word}",
          "Comparing the experts, {names} ({n} of {m}) consistently indicate that the image is {word}")
_NO_AGREEMENT = ("No expert clearly supports this reading on its own, so the steps above are weighed together",)
_UNDECIDED = ("; {names} {be} inconclusive", "; {names} {be} left undecided")
_DISAGREE = ("{names} {verb} the other way (mean confidence {dc}% against {ac}%) and {be} down-weighted.",
             "The dissent of {names} (mean confidence {dc}% against {ac}%) is outweighed and down-weighted.",
             "{names} {verb} otherwise, but with mean confidence {dc}% against {ac}% {be} given less weight.")
_CONCLUDE = ("Taken together, the evidence from {names} indicates that the image is {word}.",
             "Weighing the agreeing experts ({names}) above the rest, the image is {word}.",
             "In conclusion, {names} support the verdict that this image is {word}.")
_WORDS = {1: ("generated", "AI-generated", "synthetic"), 0: ("real", "authentic", "genuine")}


class TemplateWriter:
    """Deterministic CoE from the evidence: phrase bank seeded per image id, 3-8 steps, no decimals."""
    name = "template"

    def __init__(self, max_steps: int = 8, min_discovery: int = 2, seed: int = 0,
                 quote_measurements: bool = True) -> None:
        """``quote_measurements=False`` keeps each expert's verdict but neither its measurements nor its score: a
        model of a few hundred thousand parameters spends most of its capacity copying digit strings it
        cannot see, and greedy decoding loops on them (measured on the toy world of the tests)."""
        if max_steps < 3:
            raise ValueError("a chain of evidence needs at least 3 steps")
        self.max_steps, self.min_discovery, self.seed = max_steps, min_discovery, seed
        self.quote_measurements = quote_measurements

    def write(self, evidence: dict[str, ExpertEvidence], label: int, image_id: str) -> CoE:
        if not evidence:
            raise ValueError(f"no expert evidence for {image_id}: run the experts first")
        rng = random.Random(int(hashlib.sha256(f"{self.seed}:{image_id}".encode()).hexdigest()[:16], 16))
        ranked = sorted(evidence.values(), key=lambda e: (-e.confidence, e.expert))
        agree = [e for e in ranked if VERDICT_CLASS.get(e.verdict) == label]
        dissent = [e for e in ranked if VERDICT_CLASS.get(e.verdict) == 1 - label]
        undecided = [e for e in ranked if e.verdict not in VERDICT_CLASS]
        n_verify = 1 + bool(dissent)
        # Discovery: informative experts first; inconclusive ones only to reach min_discovery.
        informative = [e for e in ranked if e.verdict in VERDICT_CLASS]
        chosen = (informative + undecided)[:max(len(informative), self.min_discovery)]
        chosen = chosen[:self.max_steps - n_verify - 1]
        steps = []
        for e in chosen:
            finding = e.text.split(": ", 1)[1] if ": " in e.text else e.text
            if not self.quote_measurements:  # "<measurements>, typical of ... (score N%)" -> "it looks typical of ..."
                finding = "it looks " + finding.split(", ", 1)[-1].split(" (score", 1)[0]
            text = e.text if self.quote_measurements else f"{e.expert}: {finding}"
            steps.append(("discovery", [e.expert], rng.choice(_DISCOVERY).format(text=text, expert=e.expert,
                                                                                   finding=finding)))
        word = rng.choice(_WORDS[label])
        if agree:
            text = rng.choice(_AGREE).format(n=len(agree), m=len(evidence), names=_list([e.expert for e in agree]),
                                             word=word)
        else:
            text = rng.choice(_NO_AGREEMENT)
        if undecided:
            text += rng.choice(_UNDECIDED).format(names=_list([e.expert for e in undecided]),
                                                  be="is" if len(undecided) == 1 else "are")
        steps.append(("verification", [e.expert for e in agree + undecided], text + "."))
        if dissent:
            one = len(dissent) == 1
            steps.append(("verification", [e.expert for e in dissent], rng.choice(_DISAGREE).format(
                names=_list([e.expert for e in dissent]), verb="points" if one else "point",
                be="is" if one else "are", dc=_mean_confidence(dissent), ac=_mean_confidence(agree))))
        # Support for the conclusion: the agreeing experts, else the inconclusive ones, else (a trace QC must
        # reject) the dissenters -- never invent support.
        support = (agree or undecided or dissent)[:3]
        steps.append(("conclusion", [e.expert for e in support], rng.choice(_CONCLUDE).format(
            names=_list([e.expert for e in support]), word=_WORDS[label][0])))
        coe = CoE([{"idx": k, "phase": p, "cites": c, "text": t} for k, (p, c, t) in enumerate(steps, 1)],
                  int(label), self.name)
        problems = check_trace(coe.text(), evidence, label)
        coe.qc = {"attempts": 1, "passed": not problems, "problems": problems}
        return coe


class LLMWriter:
    """Paraphrases each templated step with a small causal LM, keeping citations, numbering and numbers.

    A paraphrase is rejected (the template step is kept, and counted in ``fallbacks``) if it drops a cited
    expert, adds a number or a decimal, or changes which class words it uses. A trace whose paraphrases fail
    QC falls back to the template trace as a whole (``trace_fallbacks``). ``generate_fn(prompt) -> text``
    replaces the model (tests); otherwise ``model_dir`` (with ``gguf_file`` for a GGUF checkpoint such as
    SmolLM2-135M-Instruct) is loaded with transformers on first use.
    """

    def __init__(self, model_dir: str | Path | None = None, gguf_file: str | None = None, max_new_tokens: int = 64,
                 generate_fn: Callable[[str], str] | None = None, template: TemplateWriter | None = None) -> None:
        if generate_fn is None and model_dir is None:
            raise ValueError("LLMWriter needs model_dir (a local model folder) or generate_fn")
        self.model_dir, self.gguf_file, self.max_new_tokens = model_dir, gguf_file, max_new_tokens
        self.template = template or TemplateWriter()
        self._generate = generate_fn
        self.name = f"llm:{Path(gguf_file or model_dir).name}" if (gguf_file or model_dir) else "llm:injected"
        self.fallbacks = self.paraphrased = self.trace_fallbacks = 0

    def _load(self) -> Callable[[str], str]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(self.model_dir, **kwargs)
        device = "cuda" if torch.cuda.is_available() else "cpu"  # a 7 B writer (gpu profile) needs the GPU
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype="auto", **kwargs).to(device).eval()

        def generate(prompt: str) -> str:
            if tokenizer.chat_template:
                inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], return_dict=True,
                                                       add_generation_prompt=True, return_tensors="pt")
            else:
                inputs = tokenizer(prompt, return_tensors="pt")
            inputs = inputs.to(device)
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

        return generate

    @staticmethod
    def prompt(step: dict) -> str:
        return (f"Rewrite this sentence in other words. Keep the names {', '.join(step['cites'])} exactly, "
                f"keep its numbers, add no new numbers. Reply with the sentence only.\nSentence: {step['text']}")

    @staticmethod
    def acceptable(candidate: str, step: dict) -> bool:
        if not candidate or len(candidate) > 3 * len(step["text"]) + 40 or re.search(r"\d\.", candidate):
            return False
        if any(not _names(candidate, [name]) for name in step["cites"]):
            return False
        if not set(re.findall(r"\d+", candidate)) <= set(re.findall(r"\d+", step["text"])):
            return False
        return all(_has_words(candidate, w) == _has_words(step["text"], w) for w in CLASS_WORDS.values())

    def write(self, evidence: dict[str, ExpertEvidence], label: int, image_id: str) -> CoE:
        base = self.template.write(evidence, label, image_id)
        if self._generate is None:
            self._generate = self._load()
        steps, fallbacks = [], 0
        for step in base.steps:
            lines = [ln.strip() for ln in self._generate(self.prompt(step)).splitlines() if ln.strip()]
            candidate = re.sub(r"^\s*(\d+\.\s+|sentence:\s*)", "", lines[0], flags=re.IGNORECASE).strip(' "') \
                if lines else ""
            ok = self.acceptable(candidate, step)
            fallbacks += not ok
            steps.append({**step, "text": candidate if ok else step["text"]})
        coe = CoE(steps, base.conclusion, self.name)
        problems = check_trace(coe.text(), evidence, label)
        if problems:  # the paraphrases broke the trace: keep the template trace (and its own QC result)
            self.trace_fallbacks += 1
            fallbacks, coe, problems = len(steps), CoE(base.steps, base.conclusion, self.name), base.qc["problems"]
        self.fallbacks += fallbacks
        self.paraphrased += len(steps) - fallbacks
        coe.qc = {"attempts": 1, "passed": not problems, "problems": problems, "fallbacks": fallbacks}
        return coe


WRITER_KINDS = ("template", "llm")


def build_writer(options: dict) -> TemplateWriter | LLMWriter:
    """A writer from its parameter block: ``{kind: template, seed, max_steps, quote_measurements}`` or ``{kind: llm, model_dir,
    gguf_file, max_new_tokens, seed}`` (the LLM paraphrases the template's steps)."""
    options = dict(options)
    kind = options.pop("kind", "template")
    template_keys = {k: options.pop(k) for k in ("seed", "max_steps", "min_discovery", "quote_measurements")
                     if k in options}
    if kind == "template":
        if options:
            raise ValueError(f"unknown template writer options {sorted(options)}")
        return TemplateWriter(**template_keys)
    if kind == "llm":
        return LLMWriter(template=TemplateWriter(**template_keys), **options)
    raise ValueError(f"writer kind must be one of {WRITER_KINDS}, got {kind!r}")


RECORD_COLUMNS = ("id", "split", "label", "generator", "image", "solution", "n_steps", "n_experts", "writer",
                  "qc_passed")


def make_record(image_id: str, split: str, label: int, generator: str | None, image_path: str,
                evidence: dict[str, ExpertEvidence], coe: CoE) -> dict:
    """One REVEAL-Bench record (spec §1.5); ``solution`` is the reference the GRPO rewards compare against."""
    return {"id": image_id, "split": split, "label": int(label), "generator": generator, "image": str(image_path),
            "experts": {name: ev.to_dict() for name, ev in evidence.items()},
            "coe": {"steps": coe.steps, "conclusion": coe.conclusion, "writer": coe.writer, "qc": coe.qc},
            "prompt": PROMPT, "solution": coe.text()}


def record_frame(records: Sequence[dict]):
    """Records flattened to one row each (:data:`RECORD_COLUMNS`), for schema validation."""
    import pandas as pd

    rows = [{"id": r["id"], "split": r["split"], "label": int(r["label"]), "generator": r.get("generator"),
             "image": r["image"], "solution": r["solution"], "n_steps": len(r["coe"]["steps"]),
             "n_experts": len(r["experts"]), "writer": r["coe"]["writer"],
             "qc_passed": bool(r["coe"]["qc"].get("passed", False))} for r in records]
    return pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
