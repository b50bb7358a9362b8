import torch
from torch import nn

from genguard.models.backbones import create_backbone
from genguard.models.lora import add_lora, merge_lora


def test_lora_starts_as_identity_then_changes_output_and_merges_exactly():
    backbone = create_backbone({"name": "genguard-tiny-vit"}).eval()
    images = torch.randn(3, 3, 64, 64)
    before = backbone.encode_image(images)
    params = add_lora(backbone.visual, rank=4, alpha=4.0)
    assert torch.allclose(backbone.encode_image(images), before, atol=1e-6)  # B = 0 at init
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.05)
    adapted = backbone.encode_image(images)
    assert not torch.allclose(adapted, before, atol=1e-4)
    merge_lora(backbone.visual)
    assert torch.allclose(backbone.encode_image(images), adapted, atol=1e-5)
    assert not any("lora" in name for name, _ in backbone.named_parameters())


def test_lora_refuses_modules_without_attention():
    try:
        add_lora(nn.Linear(4, 4), rank=2, alpha=2)
    except ValueError as err:
        assert "MultiheadAttention" in str(err)
    else:
        raise AssertionError("expected ValueError")


def test_backbone_random_init_is_seeded():
    a = create_backbone({"name": "genguard-tiny-vit", "seed": 3})
    b = create_backbone({"name": "genguard-tiny-vit", "seed": 3})
    c = create_backbone({"name": "genguard-tiny-vit", "seed": 4})
    wa, wb, wc = (m.visual.conv1.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
