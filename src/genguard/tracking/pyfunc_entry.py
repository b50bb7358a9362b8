"""Models-from-code entry point: the file handed to ``mlflow.pyfunc.log_model(python_model=...)``.

MLflow copies this file into the logged model and executes it on load; ``set_model`` tells MLflow
which object is the model. Kept apart from ``pyfunc`` because executing ``set_model`` on
import is a side effect nobody else wants.
"""

import mlflow.models

from genguard.tracking.pyfunc import GenguardPyfunc

mlflow.models.set_model(GenguardPyfunc())
