"""Explainable AI-generated image detection with a vision-language model: REVEAL (arXiv 2511.23158).

REVEAL-Bench construction (forensic experts -> evidence -> chains of evidence, :mod:`bench`) and the two
training stages, CoE-Tuning (SFT) and R-GRPO, which run inside TRL's trainers (:mod:`training`), with the
reward terms of the released code (:mod:`rewards`, judges in :mod:`judges`).

The family registers no core-loop trainable (``METHODS`` is empty): its training is TRL's, not the core's
loop, so the core's method contract does not apply; the family's tests cover its stages instead. Importing
the package registers the family's MLflow predictor.
"""

from genguard.families.vlm import inference  # noqa: F401  (registration)

FAMILY = "vlm"
#: Trainables of the core loop (none: REVEAL trains in TRL's SFTTrainer / GRPOTrainer).
METHODS: tuple[str, ...] = ()
#: The method this family's pipelines reproduce.
PIPELINE_METHODS = ("reveal",)

__all__ = ["FAMILY", "METHODS", "PIPELINE_METHODS"]
