"""The CLIP BPE tokenizer offline: transformers' ``CLIPTokenizer`` built from the BPE file that the
``open_clip_torch`` wheel ships (the 49,408-token vocabulary of Stable Diffusion 1.x), or loaded from a
diffusers checkpoint's ``tokenizer/`` folder at paper scale. Same class either way.

Derivation (the CLIP/GPT-2 byte-level BPE layout): the 256 byte symbols, the same with ``</w>``, one
token per merge in file order, then ``<|startoftext|>`` and ``<|endoftext|>``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from functools import lru_cache
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 49152 - 256 - 2


def _byte_symbols() -> list[str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    table = dict(zip(printable, printable)) | {b: 256 + i for i, b in enumerate(extra)}
    return [chr(table[b]) for b in [*printable, *extra]]


def open_clip_bpe_path() -> Path:
    # find_spec locates the package without importing it (its __init__ pulls torchvision and timm).
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip_torch is not installed: it ships the CLIP BPE vocabulary the "
                                  "testbed tokenizer is built from (pip install open_clip_torch)")
    return Path(next(iter(spec.submodule_search_locations))) / BPE_FILE


@lru_cache(maxsize=4)
def clip_tokenizer(model_max_length: int = 77, source: str | None = None):
    """A ``CLIPTokenizer``: from ``source`` (a folder with tokenizer files) or from open_clip's BPE file.

    Pads with ``<|endoftext|>`` (the SD-1.x convention), truncates nothing silently: callers check length.
    """
    from transformers import CLIPTokenizer

    if source is not None:
        return CLIPTokenizer.from_pretrained(source, model_max_length=model_max_length)
    with gzip.open(open_clip_bpe_path(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")[1:MERGE_COUNT + 1]
    symbols = _byte_symbols()
    vocab = [*symbols, *[s + "</w>" for s in symbols], *["".join(m.split()) for m in lines],
             "<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path, merges_path = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_path.write_text(json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8")
        merges_path.write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
        # Positional file arguments: transformers 5's keyword names differ from 4.x's (and a wrong
        # keyword silently yields garbage ids).
        return CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=model_max_length)
