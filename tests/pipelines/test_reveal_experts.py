"""A trained detector of the project is a REVEAL-Bench expert (loaded through its family's registered
predictor, as the MLflow pyfunc loads it); a missing one is skipped by name or stops the build with the fix."""

import numpy as np
import pytest
from PIL import Image

from genguard.data.images import Preprocess
from genguard.families.aigi.examples import tiny_spec
from genguard.io.model_files import save_model_dir
from genguard.pipelines.vlm.nodes import experts_from_params
from genguard.registry import build_model

NUMPY_EXPERTS = {"spectrum": {}, "noise_residual": {}, "local_artifacts": {}}


def test_a_trained_detector_folder_reads_images_as_an_expert(tmp_path):
    model = build_model(tiny_spec("univfd"))
    folder = save_model_dir(model, tmp_path / "univfd", extra={"preprocess": Preprocess(model.backbone.image_size)
                                                               .to_dict()})
    experts, skipped = experts_from_params({**NUMPY_EXPERTS, "univfd": {"kind": "detector", "model_dir": str(folder)}})
    assert skipped == [] and [e.name for e in experts][-1] == "univfd"
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)) for i in range(3)]
    readings = experts[-1].read_batch(images)
    assert all(0.0 <= r.statistic <= 1.0 for r in readings)  # P(fake) from the detector
    assert len({r.statistic for r in readings}) > 1


def test_a_missing_detector_is_skipped_by_name_or_stops_with_the_fix(tmp_path):
    missing = {"kind": "detector", "model_dir": str(tmp_path / "pin_clip")}
    experts, skipped = experts_from_params({**NUMPY_EXPERTS, "pin_clip": {**missing, "on_missing": "skip"}})
    assert skipped == ["pin_clip"] and len(experts) == 3
    with pytest.raises(FileNotFoundError, match=r"kedro run --pipeline=pin_clip"):
        experts_from_params({**NUMPY_EXPERTS, "pin_clip": missing})
    with pytest.raises(ValueError, match="needs >= 3"):
        experts_from_params({"spectrum": {}, "pin_clip": {**missing, "on_missing": "skip"}})
