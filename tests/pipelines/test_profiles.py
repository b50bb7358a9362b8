"""The profiles differ by configuration only: conf/gpu merges key by key over conf/base."""

from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from genguard import settings
from genguard.families.aigi.methods.pin_clip import PiNCLIPConfig
from genguard.models.backbones import BackboneSpec
from genguard.pipelines.aigi.stages import PRIOR_DIR
from genguard.training import TrainConfig

from .conftest import ROOT


def _params(env: str) -> dict:
    loader = OmegaConfigLoader(str(ROOT / "conf"), env=env, **{k: v for k, v in settings.CONFIG_LOADER_ARGS.items()
                                                               if k != "default_run_env"})
    return loader["parameters"]


def test_gpu_profile_is_paper_scale_and_keeps_base_keys():
    base, gpu = _params("base"), _params("gpu")
    pin = gpu["pin_clip"]
    assert pin["model"]["backbone"] == {"name": "ViT-L-14-quickgelu", "pretrained": "openai"}
    assert pin["model"]["options"]["noise_heads"] == 8
    # soft merge: keys the gpu file does not name still come from base
    assert pin["model"]["options"]["lambda_vpn"] == base["pin_clip"]["model"]["options"]["lambda_vpn"]
    assert pin["reports_dir"] == base["pin_clip"]["reports_dir"]
    train = TrainConfig.from_dict(pin["train"])
    assert train.backend == "deepspeed" and train.lr == pytest.approx(1e-4)
    PiNCLIPConfig.from_dict(pin["model"]["options"])  # every option is a known one
    assert gpu["data"]["source"].startswith("data/01_raw/") and gpu["data"]["resize_mode"] == "center_crop"
    assert gpu["univfd"]["model"]["backbone"]["name"] == "ViT-L-14-quickgelu"


def test_gpu_profile_for_ns_net_and_dgs_net_is_the_papers_setup():
    from genguard.families.aigi.methods.dgs_net import DGSNetConfig
    from genguard.families.aigi.methods.ns_net import NSNetConfig

    base, gpu = _params("base"), _params("gpu")
    for method, config in (("ns_net", NSNetConfig), ("dgs_net", DGSNetConfig)):
        params = gpu[method]
        backbone = BackboneSpec.from_dict(params["model"]["backbone"])  # base's embedded image_size dropped
        assert (backbone.name, backbone.pretrained, backbone.extra) == ("ViT-L-14-quickgelu", "openai", {})
        options = config.from_dict(params["model"]["options"])
        assert options.patch_selection["patch_size"] * options.patch_selection["grid"] == 224
        assert TrainConfig.from_dict(params["train"]).backend == "deepspeed"
        assert params["model"]["options"]["lora_rank"] == base[method]["model"]["options"]["lora_rank"] == 6
    assert gpu["dgs_net"]["train"]["epochs"] == 1 and gpu["dgs_net"]["model"]["options"]["teacher_epochs"] == 3
    assert "zero1" in gpu["dgs_net"]["train"]["deepspeed"]["config_file"]  # surgery edits gradients: ZeRO <= 1
    assert gpu["data"]["captions"]["kind"] == "file"
    assert set(gpu["data"]["test_sources"]) == {"ufd", "aigcdetect", "aigibench"}


@pytest.mark.parametrize("env", ["base", "test"])
def test_embedded_profiles_train_in_process(env):
    params = _params(env)
    prior = params["backbone_prior"]["backbone"]
    assert prior["name"] == "genguard-lit-effnet-lite0"
    if env == "base":
        assert str(Path(prior["pretrained"]).parent) == PRIOR_DIR  # the data stage's DVC output
    for method in ("pin_clip", "univfd", "ns_net", "dgs_net"):
        assert TrainConfig.from_dict(params[method]["train"]).backend == "torch"
        # every AIGI detector of the embedded default reads the one prior aigi_data builds
        assert {k: params[method]["model"]["backbone"][k] for k in ("name", "pretrained")} == prior


def test_every_gpu_backbone_uses_the_activation_its_weights_were_trained_with():
    """OpenAI CLIP weights need QuickGELU; the factory refuses the plain config (checked without weights)."""
    from genguard.models.backbones import BackboneSpec, check_activation

    gpu = _params("gpu")
    for method in ("pin_clip", "univfd", "ns_net", "dgs_net"):
        check_activation(BackboneSpec.from_dict(gpu[method]["model"]["backbone"]))
    with pytest.raises(ValueError, match="QuickGELU.*-quickgelu"):
        check_activation(BackboneSpec("ViT-L-14", "openai"))
    check_activation(BackboneSpec("ViT-L-14", "openai", extra={"force_quick_gelu": True}))


def test_gpu_profile_for_the_face_detectors_is_the_papers_protocol():
    """CLIP ViT-L/14 (OpenAI, QuickGELU), FF++ c23 training, cross-dataset tests, DeepSpeed; SeLop's budget."""
    from genguard.families.face.frames import FramePolicy
    from genguard.families.face.methods.effort import EffortConfig
    from genguard.families.face.methods.masm import MASMConfig
    from genguard.families.face.methods.selop import SeLopConfig

    base, gpu = _params("base"), _params("gpu")
    data = gpu["face_data"]
    assert data["source"] == "data/01_raw/FaceForensics++" and data["compression"] == "c23"
    assert data["methods"] == ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
    tests = [entry if isinstance(entry, str) else entry["source"] for entry in data["test_sources"]]
    assert any("Celeb-DF" in t for t in tests) and any(t.endswith("DFDC") for t in tests)
    assert any(t.endswith("DFDCP") for t in tests)
    assert any(isinstance(e, dict) and e["json_names"] == ["DeepFakeDetection"] for e in data["test_sources"])
    assert FramePolicy(**data["frames"]).crop_size == 224
    for method, config in (("effort", EffortConfig), ("selop", SeLopConfig), ("masm", MASMConfig)):
        params = gpu[method]
        backbone = BackboneSpec.from_dict(params["model"]["backbone"])  # base's embedded image_size dropped
        assert (backbone.name, backbone.pretrained, backbone.extra) == ("ViT-L-14-quickgelu", "openai", {})
        config.from_dict(params["model"]["options"])  # every option is a known one
        train = TrainConfig.from_dict(params["train"])
        assert train.backend == "deepspeed" and "bf16" in train.deepspeed["config_file"]
        assert params["registry"] == base[method]["registry"]  # soft merge keeps base keys
    assert gpu["selop"]["model"]["options"]["budget"] == [390000, 430000]
    assert gpu["effort"]["model"]["options"]["residual_rank"] == 1
    assert gpu["deepfake_benchmark"]["conditions"] == "deeperforensics_full"


def test_gpu_profile_for_t2i_names_stable_diffusion_and_the_papers_settings():
    from genguard.pipelines.t2i import nodes

    base, gpu = _params("base"), _params("gpu")
    assert gpu["t2i"]["model"]["pretrained"].startswith("data/01_raw/")
    assert gpu["t2i"]["model"]["vae"] == base["t2i"]["model"]["vae"]  # soft merge keeps the rest
    assert gpu["set"]["probe"]["query_lengths"] == [256] and gpu["set"]["probe"]["scales"] == [0.2, 0.3, 7.0, 10.0, 20.0]
    ticoe = TrainConfig.from_dict(gpu["ticoe"]["methods"]["ticoe"]["train"])
    assert (ticoe.steps, ticoe.batch_size, ticoe.lr, ticoe.backend) == (500, 1, 1e-5, "deepspeed")
    assert gpu["ticoe"]["methods"]["ticoe"]["resample_every"] == 200
    with pytest.raises(NotImplementedError, match="NudeNet"):  # no silent shapes judge on real images
        nodes.prepare_evaluator(None, None, gpu["t2i"])
