"""Video mixture-of-experts robustness: a model-level video MoE (a light router picks among complete expert
classifiers), TLGA / J-TLGA component-level attacks with their PGD baselines, standard / PGD / J-TLAT
adversarial training, UCF-101 / HMDB-51 ingestion and procedural motion clips for the embedded default.

Importing the package registers the trainable video MoE in :data:`genguard.registry.MODELS` and the
family's MLflow predictor.
"""

from genguard.families.video import examples, inference  # noqa: F401  (registration)
from genguard.families.video.moe import FAMILY, METHOD, VideoMoE

#: Every registered trainable of the family (the method contract test runs each).
METHODS = (METHOD,)

__all__ = ["FAMILY", "METHODS", "VideoMoE", "examples"]
