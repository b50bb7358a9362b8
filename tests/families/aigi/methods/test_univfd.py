import torch

from genguard.families.aigi.methods import DETECTORS, build_detector


def test_only_the_linear_head_trains(tiny_backbone):
    model = build_detector("univfd", backbone=tiny_backbone)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-2, 0.0))
    batch = {"image": torch.randn(8, 3, 64, 64), "label": torch.arange(8) % 2}
    for _ in range(3):
        loss, _ = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())


def test_cached_features_give_the_same_logits_as_images(tiny_backbone):
    model = build_detector("univfd", backbone=tiny_backbone).eval()
    images = torch.randn(4, 3, 64, 64)
    features = model.encode(images)
    assert torch.allclose(model.classify(features), model(images))
    assert torch.allclose(model.predict_step({"features": features}), model(images))


def test_every_aigi_detector_is_in_the_one_model_registry():
    from genguard.registry import MODELS

    assert DETECTORS == ("pin_clip", "univfd", "ns_net", "dgs_net")
    assert set(DETECTORS) <= set(MODELS.names())


def test_the_feature_is_the_projected_cls_embedding(tmp_path):
    """A tower whose width (48) differs from its embedding size (32): a pre-projection or mean-pooled
    stub gives another shape or other numbers."""
    import json

    import open_clip

    config = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 48, "head_width": 24,
                                              "patch_size": 8},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    path = tmp_path / "genguard-test-narrow.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    model = build_detector("univfd", backbone={"name": "genguard-test-narrow"}).eval()
    visual = model.backbone.visual
    captured = {}
    handle = visual.transformer.register_forward_hook(lambda module, args, out: captured.update(tokens=out))
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = model.encode(images)
        handle.remove()
        tokens = captured["tokens"]
        cls = visual.ln_post(tokens[:, 0]) @ visual.proj
        pooled = visual.ln_post(tokens[:, 1:].mean(1)) @ visual.proj
    assert features.shape == (3, 32) and model.head.in_features == 32
    assert torch.allclose(features, cls, atol=1e-5)
    assert not torch.allclose(features, pooled, atol=1e-3)
