"""A tiny *untrained* testbed for the mechanism tests (one per test module: some tests freeze it in place).
Behaviour on a trained testbed uses the session fixture ``t2i_trained`` (tests/conftest.py)."""

import pytest

from genguard.families.t2i import TextToImageModel
from genguard.families.t2i.examples import TINY_TESTBED


@pytest.fixture(scope="module")
def tiny_model() -> TextToImageModel:
    return TextToImageModel(**TINY_TESTBED).eval()  # its init comes from its seed


@pytest.fixture(scope="module")
def model(tiny_model) -> TextToImageModel:
    return tiny_model
