import copy

import pytest
import torch
from torch import nn

from genguard.models.backbones import create_backbone
from genguard.models.lora import LoRAConfig, add_lora, lora_parameters, merge_lora

D, HEADS = 8, 2


def _attention(batch_first: bool = True) -> nn.MultiheadAttention:
    attention = nn.MultiheadAttention(D, HEADS, batch_first=batch_first)
    with torch.no_grad():
        attention.in_proj_bias.normal_()
        attention.out_proj.bias.normal_()
    return attention


def _with_update(base: nn.MultiheadAttention, rows: slice, update: torch.Tensor) -> nn.MultiheadAttention:
    """A plain copy of ``base`` whose in_proj_weight rows get ``update`` added (the closed form)."""
    reference = copy.deepcopy(base)
    with torch.no_grad():
        reference.in_proj_weight[rows] += update
    return reference


def _tiny():
    return create_backbone({"name": "genguard-tiny-vit"})


def test_config_validates_and_scales():
    assert LoRAConfig(4, 6.0).scale == 1.5
    assert LoRAConfig(4, 6.0, scaling="alpha/sqrt(r)").scale == 3.0
    assert LoRAConfig.from_dict({"rank": 2, "alpha": 2, "dropout": 0.8}) == LoRAConfig(2, 2, "alpha/r", 0.8)
    for bad in ({"rank": 0, "alpha": 1}, {"rank": 2, "alpha": 1, "dropout": 1.0},
                {"rank": 2, "alpha": 1, "dropout": -0.1}, {"rank": 2, "alpha": 1, "scaling": "alpha"},
                {"rank": 2, "alpha": 1, "rnak": 3}, {"alpha": 1}):
        with pytest.raises(ValueError):
            LoRAConfig.from_dict(bad)


@pytest.mark.parametrize(("scaling", "scale"), [("alpha/r", 0.75), ("alpha/sqrt(r)", 1.5)])
def test_update_is_scale_times_b_a_x(scaling, scale):
    base = _attention()
    attention = copy.deepcopy(base)
    add_lora(attention, LoRAConfig(rank=4, alpha=3.0, scaling=scaling))
    a_q, b_q, a_v, b_v = torch.randn(4, D), torch.randn(D, 4), torch.randn(4, D), torch.randn(D, 4)
    with torch.no_grad():
        attention.lora_a[0], attention.lora_b[0] = a_q, b_q
        attention.lora_a[2], attention.lora_b[2] = a_v, b_v
    x, y = torch.randn(2, 5, D), torch.randn(2, 1, D)
    # v, closed form: with a single key the softmax is 1 and the output is out_proj(v) for every query.
    w_v, b_v_bias = base.in_proj_weight[2 * D:], base.in_proj_bias[2 * D:]
    v = y @ w_v.T + b_v_bias + scale * (y @ a_v.T @ b_v.T)
    expected = (v @ base.out_proj.weight.T + base.out_proj.bias).expand(2, 5, D)
    torch.testing.assert_close(attention(x, y, y, need_weights=False)[0], expected, atol=1e-5, rtol=1e-5)
    # q (and v) through full self-attention: a plain attention with W_q + scale B_q A_q, W_v + scale B_v A_v.
    reference = _with_update(_with_update(base, slice(0, D), scale * b_q @ a_q), slice(2 * D, 3 * D),
                             scale * b_v @ a_v)
    torch.testing.assert_close(attention(x, x, x)[0], reference(x, x, x)[0], atol=1e-5, rtol=1e-5)
    wrong = _with_update(_with_update(base, slice(0, D), (2.25 - scale) * b_q @ a_q), slice(2 * D, 3 * D),
                         scale * b_v @ a_v)  # q with the other scaling
    assert not torch.allclose(attention(x, x, x)[0], wrong(x, x, x)[0], atol=1e-3)


def test_at_init_the_adapted_backbone_equals_the_original():
    backbone = _tiny().eval()
    images, tokens = torch.randn(2, 3, 64, 64), backbone.tokenizer(["a photo", "a cat on a mat"])
    before_image, before_text = backbone.encode_image(images), backbone.clip.encode_text(tokens)
    params = add_lora(backbone.clip, LoRAConfig(rank=4, alpha=4.0, dropout=0.5))
    assert len(params) == 2 * 4 and all(torch.count_nonzero(p) == 0 for p in params[1::2])  # B = 0
    torch.testing.assert_close(backbone.encode_image(images), before_image, atol=1e-6, rtol=0)
    # The text tower passes open_clip's float causal mask to every attention.
    torch.testing.assert_close(backbone.clip.encode_text(tokens), before_text, atol=1e-6, rtol=0)


def test_dropout_hits_only_the_lora_branch_in_training():
    base = _attention()
    attention = copy.deepcopy(base)
    add_lora(attention, LoRAConfig(rank=2, alpha=2.0, dropout=0.5))
    x, y = torch.randn(3, 4, D), torch.randn(3, 1, D)
    attention.train()
    # B = 0: the LoRA branch is zero, the base path sees x undropped -> the base output, even in training.
    torch.testing.assert_close(attention(x, x, x)[0], base(x, x, x)[0], atol=1e-6, rtol=0)
    with torch.no_grad():
        attention.lora_b.normal_()
    assert not torch.allclose(attention(x, x, x)[0], attention(x, x, x)[0])  # fresh masks per pass
    # Seeded: one mask per projection drawn from the global RNG (q on the query, then k and v on the key).
    torch.manual_seed(7)
    out = attention(x, y, y, need_weights=False)[0]
    torch.manual_seed(7)
    _, _, dropped_y = torch.nn.functional.dropout(x, 0.5), torch.nn.functional.dropout(y, 0.5), \
        torch.nn.functional.dropout(y, 0.5)
    v = (y @ base.in_proj_weight[2 * D:].T + base.in_proj_bias[2 * D:]
         + 1.0 * dropped_y @ attention.lora_a[2].T @ attention.lora_b[2].T)
    torch.testing.assert_close(out, (v @ base.out_proj.weight.T + base.out_proj.bias).expand(3, 4, D))
    # Eval: dropout off -> deterministic and equal to the same adapter without dropout.
    no_dropout = copy.deepcopy(base)
    add_lora(no_dropout, LoRAConfig(rank=2, alpha=2.0))
    no_dropout.load_state_dict(attention.state_dict())
    attention.eval()
    torch.testing.assert_close(attention(x, x, x)[0], attention(x, x, x)[0], atol=0, rtol=0)
    torch.testing.assert_close(attention(x, x, x)[0], no_dropout(x, x, x)[0], atol=0, rtol=0)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", ["none", "bool", "float", "padding"])
def test_forward_matches_the_reparametrised_attention(batch_first, mask):
    base = _attention(batch_first)
    attention = copy.deepcopy(base)
    add_lora(attention, LoRAConfig(rank=3, alpha=6.0, scaling="alpha/sqrt(r)"))
    with torch.no_grad():
        attention.lora_b.normal_()
    reference = _with_update(base, slice(None), attention.delta_weight())  # W + s [B_q A_q; B_k A_k; B_v A_v]
    x = torch.randn(2, 5, D) if batch_first else torch.randn(5, 2, D)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    kwargs = {"none": {}, "bool": {"attn_mask": causal},
              "float": {"attn_mask": torch.zeros(5, 5).masked_fill(causal, float("-inf"))},
              "padding": {"key_padding_mask": torch.tensor([[False] * 5, [False] * 3 + [True] * 2])}}[mask]
    for need_weights in (False, True):
        ours, ours_w = attention(x, x, x, need_weights=need_weights, **kwargs)
        theirs, theirs_w = reference(x, x, x, need_weights=need_weights, **kwargs)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        assert (ours_w is None) == (theirs_w is None)
        if ours_w is not None:
            torch.testing.assert_close(ours_w, theirs_w, atol=1e-5, rtol=1e-5)


def test_merge_equals_unmerged_eval_outputs_and_removes_lora():
    backbone = _tiny()
    plain_keys = set(backbone.state_dict())
    add_lora(backbone.visual, LoRAConfig(rank=4, alpha=4.0, scaling="alpha/sqrt(r)", dropout=0.8))
    with torch.no_grad():
        for p in lora_parameters(backbone.visual):
            p.add_(torch.randn_like(p) * 0.05)
    images = torch.randn(3, 3, 64, 64)
    backbone.eval()
    adapted = backbone.encode_image(images)
    torch.testing.assert_close(backbone.encode_image(images), adapted, atol=0, rtol=0)  # eval: no dropout
    assert set(backbone.state_dict()) - plain_keys == {
        f"clip.visual.transformer.resblocks.{i}.attn.lora_{ab}" for i in range(2) for ab in "ab"}
    assert merge_lora(backbone.visual) is backbone.visual
    torch.testing.assert_close(backbone.encode_image(images), adapted, atol=1e-5, rtol=0)
    assert set(backbone.state_dict()) == plain_keys and not lora_parameters(backbone)
    attentions = [m for m in backbone.modules() if isinstance(m, nn.MultiheadAttention)]
    assert attentions and all(type(m) is nn.MultiheadAttention for m in attentions)
    assert not torch.allclose(backbone.encode_image(images), _tiny().eval().encode_image(images), atol=1e-4)
    merge_lora(backbone.visual)  # idempotent


def test_only_lora_is_trainable_on_a_frozen_backbone_and_gradients_reach_a_and_b():
    backbone = _tiny().freeze()
    params = add_lora(backbone.visual, LoRAConfig(rank=2, alpha=2.0, dropout=0.5))
    trainable = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    ids = {id(p) for _, p in trainable}
    assert ids == {id(p) for p in params} == {id(p) for p in lora_parameters(backbone)}
    assert all(n.endswith(("attn.lora_a", "attn.lora_b")) and p.dim() == 3 for n, p in trainable)
    with torch.no_grad():
        for b in params[1::2]:
            b.normal_(std=0.1)  # at B = 0 the gradient of A is zero by construction
    backbone.train()
    backbone.encode_image(torch.randn(2, 3, 64, 64)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in backbone.parameters() if not p.requires_grad)


def test_bf16_parameters_and_autocast():
    base = _attention()
    attention = copy.deepcopy(base)
    add_lora(attention, LoRAConfig(rank=2, alpha=2.0, dropout=0.5))
    x = torch.randn(2, 5, D)
    mask = torch.zeros(5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(x, x, x, need_weights=False, attn_mask=mask)[0]
    assert out.dtype == torch.bfloat16
    half = copy.deepcopy(attention).to(torch.bfloat16).train()
    out = half(x.bfloat16(), x.bfloat16(), x.bfloat16(), need_weights=False, attn_mask=mask.bfloat16())[0]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), base(x, x, x, attn_mask=mask)[0], atol=0.1, rtol=0.05)


def test_state_dicts_of_the_parametrisation_version_still_load():
    attention = _attention()
    add_lora(attention, LoRAConfig(rank=2, alpha=2.0))
    with torch.no_grad():
        attention.lora_b.normal_()
    legacy = {k.replace("in_proj_weight", "parametrizations.in_proj_weight.original")
               .replace("lora_", "parametrizations.in_proj_weight.0.lora_"): v
              for k, v in attention.state_dict().items()}
    assert "parametrizations.in_proj_weight.0.lora_b" in legacy
    fresh = _attention()
    add_lora(fresh, LoRAConfig(rank=2, alpha=2.0))
    fresh.load_state_dict(legacy)  # strict
    x = torch.randn(1, 3, D)
    torch.testing.assert_close(fresh(x, x, x)[0], attention(x, x, x)[0], atol=0, rtol=0)


def test_lora_refuses_what_it_cannot_adapt():
    with pytest.raises(ValueError, match="MultiheadAttention"):
        add_lora(nn.Linear(4, 4), LoRAConfig(rank=2, alpha=2))
    with pytest.raises(ValueError, match="fused"):
        add_lora(nn.MultiheadAttention(D, HEADS, kdim=4, vdim=4), LoRAConfig(rank=2, alpha=2))
    attention = _attention()
    add_lora(attention, {"rank": 2, "alpha": 2})
    with pytest.raises(ValueError, match="already"):
        add_lora(attention, LoRAConfig(rank=2, alpha=2))


def test_lora_init_is_drawn_from_the_global_rng():
    a, b = _attention(), _attention()
    b.load_state_dict(a.state_dict())
    torch.manual_seed(3)
    add_lora(a, LoRAConfig(rank=2, alpha=2))
    torch.manual_seed(3)
    add_lora(b, LoRAConfig(rank=2, alpha=2))
    assert torch.equal(a.lora_a, b.lora_a) and torch.count_nonzero(a.lora_a) > 0


def test_backbone_random_init_is_seeded():
    a = create_backbone({"name": "genguard-tiny-vit", "seed": 3})
    b = create_backbone({"name": "genguard-tiny-vit", "seed": 3})
    c = create_backbone({"name": "genguard-tiny-vit", "seed": 4})
    wa, wb, wc = (m.visual.conv1.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
