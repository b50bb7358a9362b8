"""Text-to-image safety: a trainable latent text-to-image testbed (diffusers UNet + VAE + CLIP text
encoder), TICoE concept erasure with ESD and UCE baselines, backdoor injection (Rickrolling-style and an
implicit syntactic trigger) and SET backdoor-input detection with a T2IShield baseline.

Importing the package registers its trainable models in :data:`genguard.registry.MODELS`: the testbed, its
concept classifier (the evaluator), the erasers and SET's response space.
"""

from genguard.families.t2i import (  # noqa: F401  (registration)
    erasure,
    evaluator,
    examples,
    inference,
    response_space,
    testbed,
)
from genguard.families.t2i.testbed import FAMILY, PromptError, TextToImageModel

#: Every registered trainable of the family (the method contract test runs each).
METHODS = (testbed.METHOD, evaluator.CLASSIFIER_METHOD, "ticoe", "esd", response_space.METHOD)

__all__ = ["FAMILY", "METHODS", "PromptError", "TextToImageModel", "examples"]
