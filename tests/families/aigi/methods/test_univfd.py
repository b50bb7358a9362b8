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
