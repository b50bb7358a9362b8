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
    def __init__(self, model_dir: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 16) -> None:
        from genguard.families.vlm.coe import PROMPT
        from genguard.families.vlm.evaluation import LoadedPolicy

        self.policy = LoadedPolicy(model_dir)  # the evaluation's loader: batched, on the GPU when there is one
        self.prompt, self.max_new_tokens, self.batch_size = PROMPT, max_new_tokens, batch_size

    def predict(self, model_input: Any) -> pd.DataFrame:
        from genguard.families.vlm.evaluation import parse_verdict, think_text

        images = [image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
                  for image in image_inputs(model_input)]
        batches = [self.policy.batch([self.prompt] * len(chunk), chunk)
                   for chunk in (images[i:i + self.batch_size] for i in range(0, len(images), self.batch_size))]
        completions, _ = self.policy.generate_batches(batches, max_new_tokens=self.max_new_tokens,
                                                      batch_size=self.batch_size)
        return pd.DataFrame({"completion": completions, "verdict": [parse_verdict(c) for c in completions],
                             "think": [think_text(c) for c in completions]})


PREDICTORS.register("vlm")(RevealPredictor)
