import pytest
import torch

from genguard.families.aigi.methods import build_detector
from genguard.families.aigi.methods.pin_clip import gaussian_kl_to_prior


@pytest.fixture
def model(tiny_backbone):
    # LoRA dropout off: the tests below compare several passes over the same batch
    return build_detector("pin_clip", backbone=tiny_backbone, noise_heads=2, lora_dropout=0.0)


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


# --- tests that fail on a stub of the mechanism they name -------------------------------------------------


def test_the_noise_reaches_the_feature_the_variational_loss_classifies(model):
    """L_vpn = BCE(h(f + eps)): with eps forced large, L_vpn moves while the clean L_ce does not."""
    batch = _batch()
    torch.manual_seed(0)
    _, quiet = model.training_loss(batch)
    with torch.no_grad():
        model.noise.mean_head.bias.fill_(3.0)  # mu = +3 in every dimension
    torch.manual_seed(0)
    _, loud = model.training_loss(batch)
    assert loud["ce"] == pytest.approx(quiet["ce"], abs=1e-6)
    assert abs(loud["vpn"] - quiet["vpn"]) > 0.1
    features = model.encode(batch["image"])  # and L_vpn is exactly the head on f + eps
    torch.manual_seed(0)
    eps, _, _ = model.sample_noise(features)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(model.head(features + eps).squeeze(-1),
                                                                    batch["label"].float())
    torch.manual_seed(0)
    _, again = model.training_loss(batch)
    assert again["vpn"] == pytest.approx(float(expected), rel=1e-5)


def test_the_generator_attends_to_the_class_text_features(model):
    features = torch.randn(8, model.backbone.embed_dim)
    with torch.no_grad():
        model.noise.mean_head.weight.normal_(0, 0.1)  # make the mean depend on the fused features
        before, _ = model.noise(features, model.class_text_features)
        other_text = torch.nn.functional.normalize(torch.randn_like(model.class_text_features), dim=-1)
        after, _ = model.noise(features, other_text)
    assert not torch.allclose(before, after, atol=1e-4)


def test_test_noise_mean_adds_the_predicted_mean_at_inference(tiny_backbone):
    plain = build_detector("pin_clip", backbone=tiny_backbone, noise_heads=2, test_noise="off").eval()
    torch.manual_seed(3)
    with_mean = build_detector("pin_clip", backbone=tiny_backbone, noise_heads=2, test_noise="mean").eval()
    with_mean.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for module in (plain, with_mean):
            module.noise.mean_head.bias.fill_(0.5)
        features = torch.randn(4, plain.backbone.embed_dim)
        mean, _ = plain.noise(features, plain.class_text_features)
        assert torch.allclose(with_mean.classify(features), plain.head(features + mean).squeeze(-1), atol=1e-6)
        assert not torch.allclose(with_mean.classify(features), plain.classify(features), atol=1e-4)


def test_kl_matches_the_closed_form_including_its_log_sigma_term():
    mean, sigma = torch.randn(5, 7) * 0.2, torch.rand(5, 7) * 0.3 + 0.01
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean, sigma),
                                                 torch.distributions.Normal(0.0, 0.1)).mean()
    assert torch.allclose(gaussian_kl_to_prior(mean, sigma, 0.1), expected, atol=1e-6)
    # the log-sigma term alone: at mu = 0 a smaller sigma costs more than sigma = prior
    assert gaussian_kl_to_prior(torch.zeros(3), torch.full((3,), 0.01), 0.1) > 1.0


def test_patch_selection_option_sets_the_input(tiny_backbone):
    model = build_detector("pin_clip", backbone={"name": "genguard-tiny-vit-32"}, noise_heads=2,
                           patch_selection={"patch_size": 8, "grid": 4}, normalisation="imagenet")
    overrides = model.preprocess_overrides()
    assert overrides["patch_selection"] == {"patch_size": 8, "grid": 4}
    assert overrides["mean"] == (0.485, 0.456, 0.406)
    assert build_detector("pin_clip", backbone=tiny_backbone, noise_heads=2).preprocess_overrides() == \
        {"patch_selection": None}
