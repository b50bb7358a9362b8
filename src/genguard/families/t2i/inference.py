"""What the MLflow pyfunc of a text-to-image model folder does (``genguard.registry.PREDICTORS["t2i"]``).

- a testbed (clean, erased or backdoored): a DataFrame with ``prompt`` (and optional ``seed``) -> uint8
  images [N, S, S, 3], deterministic for a seed;
- SET's response space: a float feature matrix [N, |Λ|·K·|L|] (from ``scaling_probe`` on the suspect model)
  -> the SET score per row (squared distance to the benign centre; flagged above ``threshold``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from genguard.families.t2i.response_space import ResponseSpace, scores
from genguard.families.t2i.testbed import TextToImageModel
from genguard.io.model_files import load_model_dir
from genguard.registry import PREDICTORS


class T2IPredictor:
    def __init__(self, model_dir: str, steps: int = 20, guidance: float = 4.0) -> None:
        self.model = load_model_dir(model_dir).model.eval()
        self.steps, self.guidance = steps, guidance

    def predict(self, model_input: Any) -> np.ndarray:
        if isinstance(self.model, ResponseSpace):
            return scores(self.model, torch.as_tensor(np.asarray(model_input, dtype=np.float32))).numpy()
        if not isinstance(self.model, TextToImageModel):
            raise TypeError(f"no t2i predictor for {type(self.model).__name__}")
        if not isinstance(model_input, pd.DataFrame) or "prompt" not in model_input.columns:
            raise ValueError("a text-to-image model takes a DataFrame with a 'prompt' column (and optional 'seed')")
        prompts = model_input["prompt"].astype(str).tolist()
        seeds = model_input["seed"].astype(int).tolist() if "seed" in model_input.columns else list(range(len(prompts)))
        images = self.model.generate(prompts, seeds=seeds, steps=self.steps, guidance=self.guidance)
        return (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


PREDICTORS.register("t2i")(T2IPredictor)
