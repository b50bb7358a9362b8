"""A cached model folder is reused only for the key it was saved for."""

import torch

from genguard.io.model_files import load_cached_model, save_model_dir
from genguard.registry import build_model


def test_cached_model_folder_is_returned_for_its_key_only(tmp_path):
    spec = {"family": "video", "method": "video_moe", "classes": 3, "experts": 2,
            "router": {"kind": "tiny3d", "width": 4, "depth": 1}, "expert": {"kind": "tiny3d", "width": 4, "depth": 1}}
    model = build_model(spec)
    save_model_dir(model, tmp_path / "m", extra={"cache_key": "abc", "training": {"seconds": 1.5}})
    cached = load_cached_model(tmp_path / "m", "abc")
    assert cached is not None and cached.extra["training"] == {"seconds": 1.5}
    for key, value in model.state_dict().items():
        assert torch.equal(cached.model.state_dict()[key], value)
    assert load_cached_model(tmp_path / "m", "other config") is None
    assert load_cached_model(tmp_path / "absent", "abc") is None
