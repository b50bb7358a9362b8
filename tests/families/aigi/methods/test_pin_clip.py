import pytest
import torch

from genguard.families.aigi.methods import build_detector
from genguard.families.aigi.methods.pin_clip import gaussian_kl_to_prior


@pytest.fixture
def model(tiny_backbone):
    return build_detector("pin_clip", backbone=tiny_backbone, noise_heads=2)


def _batch(n=16):
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(n) % 2
    # Separable toy task: fakes are brighter; the CLIP tower has to pick that up.
    images = torch.randn(n, 3, 64, 64, generator=g) * 0.5 + labels.view(-1, 1, 1, 1) * 1.0
    return {"image": images, "label": labels}


def test_noise_is_tiny_at_init_and_gradients_reach_generator_lora_and_head(model):
    batch = _batch()
    loss, logs = model.training_loss(batch)
    assert logs["noise_sigma"] < 0.02  # softplus(-5) ~ 7e-3: starts far below feature scale
    loss.backward()
    noise_grads = [p.grad for p in model.noise.parameters()]
    assert all(g is not None for g in noise_grads) and sum(g.abs().sum() for g in noise_grads) > 0
    lora = [p for n, p in model.named_parameters() if "lora_b" in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    frozen = [p for n, p in model.named_parameters() if n.endswith("conv1.weight")]
    assert frozen and all(not p.requires_grad for p in frozen)


def test_noise_is_reparameterised_sample_with_predicted_mean_and_sigma(model):
    features = torch.randn(64, model.backbone.embed_dim)
    torch.manual_seed(0)
    eps, mean, sigma = model.sample_noise(features)
    torch.manual_seed(0)
    xi = torch.randn_like(sigma)
    assert torch.allclose(eps, mean + sigma * xi, atol=1e-6)


def test_inference_is_deterministic_with_noise_off(model):
    model.eval()
    images = _batch()["image"]
    assert torch.equal(model(images), model(images))


def test_loss_falls_when_training(model):
    batch = _batch()
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-3, 0.0))
    first = None
    for _ in range(25):
        loss, _ = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < 0.7 * first


def test_kl_is_zero_only_at_the_prior():
    sigma = torch.full((4, 8), 0.1)
    assert gaussian_kl_to_prior(torch.zeros(4, 8), sigma, 0.1).abs() < 1e-6
    assert gaussian_kl_to_prior(torch.ones(4, 8), sigma, 0.1) > 1.0


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="noise_hedas"):
        build_detector("pin_clip", backbone={"name": "genguard-tiny-vit"}, noise_hedas=2)
    with pytest.raises(ValueError, match="test_noise"):
        build_detector("pin_clip", backbone={"name": "genguard-tiny-vit"}, noise_heads=2, test_noise="on")
