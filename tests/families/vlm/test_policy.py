"""The tiny policy folder: reasoning tags survive TRL's decoding, a tokenizer that would drop them is refused,
TRL options are checked by name, and the folder names its family for the MLflow predictor."""

import pytest
import torch

from genguard.families.vlm.policy import (
    TAGS,
    build_tiny_qwen2vl,
    check_tags_survive,
    load_processor,
    mark_folder,
)
from genguard.families.vlm.training import GRPO_DEFAULTS, trl_config

CORPUS = [("<think>1. spectrum: strong periodic peaks, typical of generated images.\n2. noise_residual: weak.\n"
           "3. So the image is generated.</think><answer>1</answer>"), "Is this image real or AI-generated?"] * 8
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1}
VISION = {"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2, "patch_size": 8,
          "spatial_merge_size": 2}


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("policy") / "tiny", CORPUS, image_size=32, vocab_size=300,
                              text=TEXT, vision=VISION)


def test_tags_are_single_normal_tokens_that_survive_skip_special_decoding(policy):
    tokenizer = load_processor(policy).tokenizer
    for tag in TAGS:
        ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, tag
        assert ids[0] not in tokenizer.all_special_ids, tag
    # What TRL does with sampled ids: decode with skip_special_tokens=True. Chat markers go, tags stay.
    text = "<think>1. a\n2. b\n3. c</think><answer>0</answer>"
    ids = tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_a_tokenizer_with_special_tags_is_refused(policy):
    from tokenizers import AddedToken

    tokenizer = load_processor(policy).tokenizer
    tokenizer.add_tokens([AddedToken(tag, special=True) for tag in TAGS], special_tokens=True)
    with pytest.raises(ValueError, match="special tokens"):
        check_tags_survive(tokenizer)


def test_tiny_policy_generates_from_an_image(policy):
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    processor = load_processor(policy)
    model = AutoModelForImageTextToText.from_pretrained(str(policy))
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                         "text": "real?"}]}],
                                         add_generation_prompt=True)
    batch = processor(text=[text], images=[Image.new("RGB", (32, 32), "red")], return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == (32 // 8 // 2) ** 2
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > batch["input_ids"].shape[1]  # it generated
    blue = processor(text=[text], images=[Image.new("RGB", (32, 32), "blue")], return_tensors="pt")
    with torch.no_grad():
        red_logits, blue_logits = model(**batch).logits, model(**blue).logits
    assert torch.isfinite(red_logits).all()
    assert not torch.allclose(red_logits[0, -1], blue_logits[0, -1])  # the image reaches the text model


def test_unknown_trl_option_names_the_block_and_the_closest_field(tmp_path):
    from trl import GRPOConfig

    with pytest.raises(ValueError, match=r"reveal\.grpo.*num_generation.*num_generations"):
        trl_config(GRPOConfig, GRPO_DEFAULTS, {"num_generation": 4}, tmp_path, "reveal.grpo")
    config = trl_config(GRPOConfig, GRPO_DEFAULTS, {"learning_rate": 3e-5}, tmp_path, "reveal.grpo")
    # REVEAL's recipe where ms-swift and TRL defaults differ, and the override.
    assert (config.beta, config.loss_type, config.top_k, config.top_p) == (0.001, "grpo", 50, 0.9)
    assert (config.weight_decay, config.adam_beta2, config.learning_rate) == (0.1, 0.95, 3e-5)


def test_marked_folder_loads_the_vlm_predictor(policy):
    from genguard.registry import load_predictor

    mark_folder(policy)
    predictor = load_predictor(str(policy))
    from PIL import Image

    predictor.max_new_tokens, predictor.batch_size = 6, 2
    red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    out = predictor.predict([red, blue, red])  # two batches; one row per image, in order
    assert list(out.columns) == ["completion", "verdict", "think"] and len(out) == 3
    assert out["completion"][0] == out["completion"][2]  # greedy: the same image, the same answer
    alone = predictor.predict([red])
    assert alone["completion"][0] == out["completion"][0]
