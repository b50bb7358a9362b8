"""What the MLflow pyfunc of a REVEAL policy folder does (``genguard.registry.PREDICTORS["vlm"]``): images
(a DataFrame with a ``path`` column, a list of PIL images, or a uint8 array) -> one record per image with the
generated chain of evidence, the parsed verdict (1 = AI-generated, 0 = real, None = unparsable) and the
think text. Greedy decoding, as the released inference script."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from genguard.data.images import image_inputs
from genguard.registry import PREDICTORS

DEFAULT_MAX_NEW_TOKENS = 512


class RevealPredictor:
    def __init__(self, model_dir: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> None:
        from transformers import AutoModelForImageTextToText

        from genguard.families.vlm.coe import PROMPT
        from genguard.families.vlm.policy import load_processor

        self.processor = load_processor(model_dir)
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
        self.prompt, self.max_new_tokens = PROMPT, max_new_tokens

    def predict(self, model_input: Any) -> pd.DataFrame:
        import torch

        from genguard.families.vlm.evaluation import parse_verdict, think_text
        from genguard.families.vlm.samples import prompt_messages

        images = [image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
                  for image in image_inputs(model_input)]
        text = self.processor.apply_chat_template(prompt_messages(self.prompt), add_generation_prompt=True)
        batch = self.processor(text=[text] * len(images), images=images, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.processor.tokenizer.pad_token_id)
        completions = self.processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return pd.DataFrame({"completion": completions, "verdict": [parse_verdict(c) for c in completions],
                             "think": [think_text(c) for c in completions]})


PREDICTORS.register("vlm")(RevealPredictor)
