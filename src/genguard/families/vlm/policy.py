"""The policy vision-language model REVEAL trains, as a Hugging Face folder that TRL loads by path.

Two ways to get one, chosen by config only:

* ``name_or_path``: a real VLM (the paper-scale profile: ``Qwen/Qwen2.5-VL-7B-Instruct``, or a local copy).
  Used as is; :func:`check_tags_survive` still runs on its processor.
* ``build: tiny_qwen2vl``: a Qwen2-VL of a few hundred thousand parameters made from a config, with a
  byte-level BPE tokenizer trained on the bench's own text (a 400-token vocabulary instead of Qwen's 151k:
  the LM head would otherwise be most of the compute on 2 cores). Random weights: it learns the format and
  whatever the pixels teach it in a CPU budget, nothing more.

Why a folder and not a module in memory: TRL's GRPOTrainer rebuilds the KL reference model from the model's
path when ``beta > 0``, and the paper's KL term (beta = 0.001) needs that reference.

The reasoning tags are ordinary added tokens, never *special* ones: TRL decodes completions with
``skip_special_tokens=True``, and special tags would vanish before the format and accuracy rewards see them
(every reward would silently read 0).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from genguard.io.atomic import atomic_dir

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
# Qwen2-VL's chat and vision markers; the processor finds the image placeholder by these names.
CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>")
# Qwen's chat layout, images as <|vision_start|><|image_pad|><|vision_end|> (the processor expands the pad).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
POLICY_FILE = "genguard_policy.json"


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer for ``corpus`` (lossless: newlines and digits survive decoding, so the
    step splitter and the answer parser read what the model wrote), with the tags as single normal tokens.

    Merges may cross spaces (no word-splitting regex): on the bench's own text, recurring phrases become
    single tokens, and a chain of evidence is about 56 tokens instead of about 200 with word-level pieces
    (measured on the embedded bench, 1,024 tokens). GRPO credits a whole completion with one advantage;
    with 4x fewer tokens the few that decide the verdict get a usable share of it on 2 CPU cores. A real
    policy keeps its own tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(CHAT_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(corpus), trainer)
    tokenizer.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAGS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _qwen2vl_config(tokenizer: Any, text: dict[str, Any], vision: dict[str, Any]) -> Any:
    from transformers import Qwen2VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in CHAT_TOKENS}
    head_dim = int(text["hidden_size"]) // int(text["num_attention_heads"])
    # mRoPE splits head_dim / 2 rotary frequencies over (time, height, width); Qwen's own split is 1:1.5:1.5.
    time_part = head_dim // 8
    space_part = (head_dim // 2 - time_part) // 2
    sections = [head_dim // 2 - 2 * space_part, space_part, space_part]
    # Qwen's defaults carry ids of a 151k vocabulary: every marker id must be this tokenizer's own.
    text_config = {"vocab_size": len(tokenizer), "max_position_embeddings": 4096, "tie_word_embeddings": True,
                   "rope_scaling": {"type": "mrope", "mrope_section": sections}, **text,
                   "bos_token_id": ids["<|im_start|>"], "eos_token_id": ids["<|im_end|>"],
                   "pad_token_id": ids["<|endoftext|>"]}
    return Qwen2VLConfig(text_config=text_config, vision_config={"temporal_patch_size": 2, "in_channels": 3, **vision},
                         image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                         vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def build_tiny_qwen2vl(out_dir: str | Path, corpus: Iterable[str], *, image_size: int, vocab_size: int,
                       text: dict[str, Any], vision: dict[str, Any], seed: int = 0) -> Path:
    """Write a randomly initialised Qwen2-VL + processor for ``image_size`` square images to ``out_dir``."""
    import torch
    from transformers import (
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = train_tokenizer(corpus, vocab_size)
    patch, merge = int(vision["patch_size"]), int(vision["spatial_merge_size"])
    if image_size % (patch * merge):
        raise ValueError(f"reveal.policy.image_size {image_size} must be a multiple of patch_size x "
                         f"spatial_merge_size = {patch * merge}")
    pixels = image_size * image_size  # min = max: every image becomes the same (image_size / patch / merge)^2 tokens
    image_processor = Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels, patch_size=patch, merge_size=merge,
                                            temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(patch_size=patch, merge_size=merge, temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=video_processor, chat_template=CHAT_TEMPLATE)
    config = _qwen2vl_config(tokenizer, text, vision)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config)
    generation = model.generation_config
    generation.bos_token_id, generation.eos_token_id = config.text_config.bos_token_id, config.text_config.eos_token_id
    generation.pad_token_id = config.text_config.pad_token_id
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / POLICY_FILE).write_text(json.dumps({
            "build": "tiny_qwen2vl", "image_size": image_size, "vocab_size": len(tokenizer),
            "parameters": int(sum(p.numel() for p in model.parameters()))}, indent=1))
    return Path(out_dir)


def load_processor(model_path: str | Path) -> Any:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_path))
    check_tags_survive(processor)
    return processor


def check_tags_survive(processor: Any) -> None:
    """Fail early when decoding would drop the reasoning tags (they are special tokens of this tokenizer)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    sample = "<think>1. a\n2. b\n3. c</think><answer>1</answer>"
    decoded = tokenizer.decode(tokenizer(sample, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    if decoded.replace(" ", "") != sample.replace(" ", ""):
        raise ValueError(f"the tokenizer's decoding loses the reasoning tags {TAGS} (decoded {decoded!r}): they are "
                         "special tokens there; TRL decodes completions with skip_special_tokens=True, so every "
                         "format and accuracy reward would read 0. Re-add them as normal tokens "
                         "(AddedToken(tag, special=False)).")


def policy_info(model_path: str | Path) -> dict[str, Any]:
    """What the folder says about itself (tiny builds), or just its path (a real model)."""
    path = Path(model_path) / POLICY_FILE
    return json.loads(path.read_text()) if path.is_file() else {"name_or_path": str(model_path)}


def mark_folder(model_path: str | Path) -> None:
    """Name the family in a trained policy folder, so ``genguard.registry.load_predictor`` (and the MLflow
    pyfunc) finds its predictor; the folder's ``config.json`` is Hugging Face's and names no family."""
    target = Path(model_path) / "genguard.json"
    if Path(model_path).is_dir() and not target.is_file():
        target.write_text(json.dumps({"family": "vlm"}))
