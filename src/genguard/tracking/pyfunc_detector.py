"""MLflow pyfunc wrapper around a genguard detector saved by ``genguard.io.model_store``.

The class is logged with MLflow's "models from code" (see ``pyfunc_entry.py``), so no pickled
object enters the model: loading re-imports this module and rebuilds the detector from the
safetensors + config folder logged as the ``detector`` artifact. The loading environment therefore
needs ``genguard`` installed.

Input accepted by ``predict``:

* a uint8 (or integer, 0..255) numpy array ``[N, H, W, 3]`` (a single ``[H, W, 3]`` image is
  promoted to ``N = 1``), or
* a pandas DataFrame with a ``path`` column; each file is opened with PIL and converted to RGB.
  Images may differ in size; they are passed to the detector as a list of PIL images. An optional
  ``caption`` column feeds detectors that classify with each image's caption (NS-Net per_sample).

Output: a float numpy array ``[N]`` of P(fake).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from PIL import Image

DETECTOR_ARTIFACT = "detector"


def _load_paths(paths: pd.Series) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(Path(path)) as handle:
            images.append(handle.convert("RGB"))  # convert() loads the pixels, so the file can close
    return images


def _as_uint8_batch(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected images as [N, H, W, 3], got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    # JSON serving hands over int64 lists; floats would be ambiguous ([0,1] or [0,255]) so refuse them.
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError("integer pixel values must be within 0..255")
        return array.astype(np.uint8)
    raise ValueError(f"pixels must be uint8 (0..255), got dtype {array.dtype}")


def prepare_images(model_input: Any) -> np.ndarray | list[Image.Image]:
    """Turn pyfunc input into what ``Detector.predict_proba`` takes (uint8 batch or PIL list)."""
    if isinstance(model_input, pd.DataFrame):
        if "path" not in model_input.columns:
            columns = list(model_input.columns)
            raise ValueError(f"a DataFrame input needs a 'path' column, got columns {columns}")
        return _load_paths(model_input["path"])
    if isinstance(model_input, list) and all(isinstance(item, Image.Image) for item in model_input):
        return [item.convert("RGB") for item in model_input]
    return _as_uint8_batch(np.asarray(model_input))


class GenguardDetectorPyfunc(mlflow.pyfunc.PythonModel):
    """P(fake) for images, from a detector folder written by ``genguard.io.model_store``."""

    def __init__(self) -> None:
        self.detector: Any = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # Looked up through the module at call time (not imported by name at the top) so tests can
        # swap load_detector, and importing this module stays cheap (no torch).
        from genguard.io import model_store

        self.detector = model_store.load_detector(context.artifacts[DETECTOR_ARTIFACT])

    # MLflow 3 derives an enforced schema from predict's type hints and warns when there are none.
    # np.ndarray is one of the hints it accepts *without* inferring a schema or converting input,
    # so DataFrames of paths still arrive untouched (a Union hint would be rejected).
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        if self.detector is None:
            raise RuntimeError("detector not loaded: load the model with mlflow.pyfunc.load_model")
        images = prepare_images(model_input)
        if len(images) == 0:
            return np.zeros((0,), dtype=np.float32)
        captions = None
        if isinstance(model_input, pd.DataFrame) and "caption" in model_input.columns:
            captions = model_input["caption"].astype(str).tolist()
        probabilities = np.asarray(self.detector.predict_proba(images, captions=captions),
                                   dtype=np.float32).reshape(-1)
        if probabilities.shape[0] != len(images):
            raise RuntimeError(f"detector returned {probabilities.shape[0]} scores for {len(images)} images")
        return probabilities
