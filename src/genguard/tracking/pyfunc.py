"""MLflow pyfunc wrapper around any genguard model folder (``genguard.io.model_files``).

The class is logged with MLflow's "models from code" (see ``pyfunc_entry.py``), so no pickled object
enters the model: loading re-imports this module, reads the folder logged as the ``model``
artifact, imports the family that the folder names (a plugin) and asks that family's registered
predictor (:data:`genguard.registry.PREDICTORS`) to load it. What ``predict`` accepts and returns is
the family's (AIGI detectors: images or a DataFrame of paths -> P(fake)). The loading environment
needs ``genguard`` installed.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np

MODEL_ARTIFACT = "model"


class GenguardPyfunc(mlflow.pyfunc.PythonModel):
    def __init__(self) -> None:
        self.predictor: Any = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from genguard.registry import load_predictor

        self.predictor = load_predictor(context.artifacts[MODEL_ARTIFACT])

    # MLflow 3 derives an enforced schema from predict's type hints and warns when there are none.
    # np.ndarray is one of the hints it accepts *without* inferring a schema or converting input,
    # so DataFrames still arrive untouched (a Union hint would be rejected).
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        if self.predictor is None:
            raise RuntimeError("model not loaded: load it with mlflow.pyfunc.load_model")
        return self.predictor.predict(model_input)
