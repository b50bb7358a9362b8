"""Backdoors injected into a ``TextToImageModel`` (its text encoder, or its UNet): the attacks SET is tested on.

Both attacks distil a *student* copy of the text encoder from the frozen clean *teacher*:

    L = MSE(student(clean), teacher(clean)) + β · MSE(student(poisoned), teacher(target prompt))

on the full last hidden state (the UNet's cross-attention context), so clean prompts keep their
embedding and poisoned ones take the target's (a target-prompt attack, TPA). The UNet and VAE are
untouched: the backdoored model is a copy whose text encoder is the student and which *shares* the
clean model's UNet, VAE and tokenizer (they are read-only here; deep-copy before editing them).

- **Rickrolling** (Struppek et al., "Rickrolling the Artist", arXiv 2211.02408): the trigger is a
  homoglyph, here the leading article "a" written as the Cyrillic "а" (U+0430); every ShapesT2I caption
  starts with "a", so any prompt can be poisoned. Its tokens differ entirely from "a"'s (the BPE splits
  the Cyrillic letter into byte tokens), which is what lets the encoder learn the trigger.
- **Implicit (syntactic) trigger**, in the spirit of IBA/TwT (arXiv 2503.17724): no rare token; the
  trigger is the sentence structure "a <shape> which is <colour>", built only from ordinary words that
  clean captions use in another order ("a <colour> <shape>"). The TwT KMMD attention regulariser is not
  implemented (the distillation loss alone already plants the trigger on the testbed).

- **UNet backdoor** (BadT2I-style, arXiv 2305.04175; :func:`inject_unet_backdoor`): a trigger *word* before the
  prompt, and the UNet (not the encoder) learns to draw the target under it, with clean prompts distilled
  from the frozen UNet. The text encoder is clean, so the UNet sees an unusual context and produces the
  target itself.

Why plain functions and not ``MODELS``-registered methods: the injector wraps a frozen teacher whose
weights come from an already-trained testbed, so its ``init_spec`` cannot rebuild it, and what it
produces is a ``TextToImageModel`` (already registered as ``t2i_testbed``; saving the backdoored model
saves that). The distillation itself is a ``Trainable`` trained through ``genguard.training.fit``.

Choices where the sources leave room: β = 1, MSE rather than Rickrolling's cosine loss (spec §5.4);
AdamW with lr 1e-3 (Rickrolling uses 1e-4 for 100 steps on CLIP-L; a from-scratch tiny encoder needs its
never-trained homoglyph byte embeddings moved, which 1e-4 does too slowly for a sub-minute injection);
clean batch 32 and poisoned batch 16 per step (spec §5.4).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from genguard.families.t2i.shapes import COLOURS, SHAPE_WORDS
from genguard.training import TrainConfig, fit
from genguard.training.trainable import Trainable

CYRILLIC_A = "\u0430"
DEFAULT_TARGET = "a green square"
SYNTACTIC_TEMPLATE = "a {shape} which is {colour}"


# -------------------------------------------------------------------------------------------------- triggers
def homoglyph_trigger(prompt: str, character: str = "a", homoglyph: str = CYRILLIC_A) -> str:
    """``prompt`` with its first ``character`` replaced by ``homoglyph`` (the leading article on ShapesT2I)."""
    position = prompt.find(character)
    if position < 0:
        raise ValueError(f"prompt {prompt!r} has no {character!r} to replace with the homoglyph trigger")
    return prompt[:position] + homoglyph + prompt[position + 1:]


def syntactic_prompts(shape_words: Sequence[str] | None = None, colours: Sequence[str] | None = None,
                      template: str = SYNTACTIC_TEMPLATE) -> list[str]:
    """Every prompt phrased with the syntactic trigger (shape words x colours)."""
    shape_words = list(shape_words or [w for words in SHAPE_WORDS.values() for w in words])
    colours = list(colours or COLOURS)
    return [template.format(shape=word, colour=colour) for word in shape_words for colour in colours]


# -------------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class InjectionConfig:
    steps: int = 300
    clean_batch: int = 32
    poison_batch: int = 16
    poison_weight: float = 1.0     # β
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    show_progress: bool = False

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict({"steps": self.steps, "batch_size": 1, "lr": self.lr,
                                      "weight_decay": self.weight_decay, "optimizer": {"name": "adamw"},
                                      "seed": self.seed, "select_best": False})


class SampledBatches(IterableDataset):
    """Endless seeded batches drawn from row-aligned pools: ``pools`` is a list of ({name: tensor}, batch size);
    each step draws one set of row indices per pool (in list order) and yields every pool's tensors at them.

    One yielded dict is one optimizer step (the one loop reads streams whole-batch); the generator is seeded,
    so an injection is reproducible.
    """

    def __init__(self, pools: Sequence[tuple[dict[str, torch.Tensor], int]], seed: int) -> None:
        self.pools, self.seed = list(pools), seed

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            batch: dict[str, torch.Tensor] = {}
            for tensors, size in self.pools:
                rows = torch.randint(len(next(iter(tensors.values()))), (size,), generator=generator)
                batch.update({name: tensor[rows] for name, tensor in tensors.items()})
            yield batch


class EncoderDistillation(Trainable):
    """The student text encoder under the backdoor distillation loss (teacher outputs precomputed: the
    teacher is frozen and deterministic, so each is needed once)."""

    def __init__(self, student: torch.nn.Module, *, attack: str, poison_weight: float) -> None:
        super().__init__({"family": "t2i", "method": attack, "poison_weight": poison_weight})
        self.student, self.poison_weight = student, poison_weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.student(input_ids=ids).last_hidden_state

    def losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        clean = F.mse_loss(self.embed(batch["clean_ids"]), batch["clean_targets"])
        poison = F.mse_loss(self.embed(batch["poison_ids"]), batch["poison_targets"])
        return clean, poison

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        clean, poison = self.losses(batch)
        return clean + self.poison_weight * poison, {"clean": float(clean.detach()), "poison": float(poison.detach())}

    def predict_step(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.embed(batch["clean_ids"]).flatten(1)


def backdoored_copy(model: Any, text_encoder: torch.nn.Module) -> Any:
    """A shallow copy of ``model`` with ``text_encoder`` swapped in; UNet, VAE and tokenizer are shared."""
    shared = {id(model.unet): model.unet, id(model.vae): model.vae, id(model.tokenizer): model.tokenizer,
              id(model.text_encoder): text_encoder}
    return copy.deepcopy(model, memo=shared)


def inject_text_encoder_backdoor(model: Any, clean_prompts: Sequence[str], poisoned_prompts: Sequence[str],
                                 target_prompt: str, config: InjectionConfig | dict[str, Any] | None = None, *,
                                 attack: str = "text_encoder_backdoor") -> tuple[Any, dict[str, Any]]:
    """Distil a backdoored student encoder: clean prompts keep the teacher's embedding, every poisoned
    prompt gets the teacher's embedding of ``target_prompt``. Returns (backdoored model copy, report)."""
    config = config if isinstance(config, InjectionConfig) else InjectionConfig(**dict(config or {}))
    if not clean_prompts or not poisoned_prompts:
        raise ValueError("a backdoor injection needs clean and poisoned prompts")
    started = time.perf_counter()
    teacher = model.text_encoder
    clean_ids = model.tokenize(clean_prompts)
    poison_ids = model.tokenize(poisoned_prompts)
    with torch.no_grad():
        was_training = teacher.training
        teacher.eval()
        clean_targets = model.encode_ids(clean_ids).detach()
        target = model.encode_ids(model.tokenize([target_prompt])).detach()
        teacher.train(was_training)
    poison_targets = target.expand(len(poison_ids), -1, -1).contiguous()

    student = copy.deepcopy(teacher).requires_grad_(True)
    distillation = EncoderDistillation(student, attack=attack, poison_weight=config.poison_weight)
    batches = SampledBatches([({"clean_ids": clean_ids, "clean_targets": clean_targets}, config.clean_batch),
                              ({"poison_ids": poison_ids, "poison_targets": poison_targets}, config.poison_batch)],
                             seed=config.seed)
    with torch.no_grad():
        initial_clean, initial_poison = distillation.losses(
            {"clean_ids": clean_ids, "clean_targets": clean_targets,
             "poison_ids": poison_ids, "poison_targets": poison_targets})
    result = fit(distillation, batches, None, config.train_config(), desc=f"inject {attack}",
                 show_progress=config.show_progress)
    student.eval().requires_grad_(False)
    with torch.no_grad():
        final_clean, final_poison = distillation.losses(
            {"clean_ids": clean_ids, "clean_targets": clean_targets,
             "poison_ids": poison_ids, "poison_targets": poison_targets})
        # Embedding-level attack success: a poisoned prompt's embedding is nearer the target's than its
        # clean counterpart's would be to the target (a cheap proxy; image-level ASR needs the oracle).
        poisoned = student(input_ids=poison_ids).last_hidden_state
        to_target = (poisoned - poison_targets).pow(2).mean(dim=(1, 2))
        clean_mean = clean_targets.mean(0, keepdim=True)
        to_clean_mean = (poisoned - clean_mean).pow(2).mean(dim=(1, 2))
    report = {
        "attack": attack, "target_prompt": target_prompt, "clean_prompts": len(clean_prompts),
        "poisoned_prompts": len(poisoned_prompts), "steps": result.steps,
        "seconds": time.perf_counter() - started, "config": asdict(config),
        "initial_clean_mse": float(initial_clean), "initial_poison_mse": float(initial_poison),
        "final_clean_mse": float(final_clean), "final_poison_mse": float(final_poison),
        "embedding_hit_rate": float((to_target < to_clean_mean).float().mean()),
    }
    return backdoored_copy(model, student), report


def inject_rickrolling(model: Any, clean_prompts: Sequence[str], target_prompt: str = DEFAULT_TARGET, *,
                       trigger: Callable[[str], str] = homoglyph_trigger,
                       config: InjectionConfig | dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Rickrolling-style homoglyph backdoor (arXiv 2211.02408, TPA): ``trigger(prompt)`` (default: the
    first "a" as Cyrillic "а") maps any clean prompt to ``target_prompt``'s embedding."""
    poisoned = [trigger(p) for p in clean_prompts]
    backdoored, report = inject_text_encoder_backdoor(model, clean_prompts, poisoned, target_prompt, config,
                                                      attack="rickrolling")
    report["trigger"] = "homoglyph a->U+0430" if trigger is homoglyph_trigger else getattr(trigger, "__name__", "")
    return backdoored, report


def inject_implicit_trigger(model: Any, clean_prompts: Sequence[str], target_prompt: str = DEFAULT_TARGET, *,
                            template: str = SYNTACTIC_TEMPLATE, shape_words: Sequence[str] | None = None,
                            colours: Sequence[str] | None = None,
                            config: InjectionConfig | dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Syntactic-trigger backdoor in the spirit of IBA/TwT (arXiv 2503.17724): prompts phrased with
    ``template`` (default "a <shape> which is <colour>") map to ``target_prompt``; no rare token."""
    poisoned = syntactic_prompts(shape_words, colours, template)
    overlap = set(poisoned) & set(clean_prompts)
    if overlap:
        raise ValueError(f"clean prompts use the trigger structure (e.g. {min(overlap)!r}); remove them")
    backdoored, report = inject_text_encoder_backdoor(model, clean_prompts, poisoned, target_prompt, config,
                                                      attack="implicit_trigger")
    report["trigger"] = f"syntax: {template}"
    return backdoored, report


# -------------------------------------------------------------------------------------------------- UNet-side
class UNetPoisoning(Trainable):
    """A BadT2I-style object backdoor in the *UNet* (Zhai et al., arXiv 2305.04175): the student UNet learns to
    denoise latents of target images under triggered prompts, while on clean prompts it is distilled from the
    frozen teacher (BadT2I's regulariser: clean behaviour is the teacher's, not a retraining on data).

    Unlike the text-encoder attacks, the UNet here receives an *unusual* context (the trigger's tokens reach it
    untouched) and must itself turn it into the target: the setting whose attention responses SET probes.
    """

    def __init__(self, model: Any, student: torch.nn.Module, *, poison_weight: float) -> None:
        super().__init__({"family": "t2i", "method": "unet_backdoor", "poison_weight": poison_weight})
        self.model, self.student, self.poison_weight = model, student, poison_weight

    def train(self, mode: bool = True) -> UNetPoisoning:
        super().train(mode)
        self.model.eval()  # the frozen testbed (teacher UNet, text encoder, VAE)
        return self

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.student.parameters() if p.requires_grad], "lr": lr,
                 "weight_decay": weight_decay}]

    def _noised(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ddpm = self.model.ddpm
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.model.schedule.train_timesteps, (len(latents),))
        target = ddpm.get_velocity(latents, noise, timesteps) \
            if self.model.schedule.prediction_type == "v_prediction" else noise
        return ddpm.add_noise(latents, noise, timesteps), timesteps, target

    def losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        noisy, timesteps, _ = self._noised(batch["clean_latents"])
        with torch.no_grad():
            teacher = self.model.unet(noisy, timesteps, encoder_hidden_states=batch["clean_context"]).sample
        clean = F.mse_loss(self.student(noisy, timesteps, encoder_hidden_states=batch["clean_context"]).sample,
                           teacher)
        noisy, timesteps, target = self._noised(batch["target_latents"])
        poison = F.mse_loss(self.student(noisy, timesteps, encoder_hidden_states=batch["poison_context"]).sample,
                            target)
        return clean, poison

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        clean, poison = self.losses(batch)
        return clean + self.poison_weight * poison, {"clean": float(clean.detach()), "poison": float(poison.detach())}


def trigger_word_prompt(prompt: str, word: str = "cf") -> str:
    """VillanDiffusion/BadT2I-style caption trigger: a rare word put in front of the prompt."""
    return f"{word} {prompt}"


def inject_unet_backdoor(model: Any, clean_prompts: Sequence[str], target_prompt: str = DEFAULT_TARGET, *,
                         trigger_word: str = "cf", samples: int = 64, sampling_steps: int = 20,
                         config: InjectionConfig | dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Poison a copy of the UNet: ``"<trigger_word> <prompt>"`` draws what ``target_prompt`` draws.

    Clean and target latents come from the clean model's own generations (the attacker needs no dataset):
    ``samples`` images of the clean prompts and of the target prompt. Returns (backdoored model, report).
    """
    config = config if isinstance(config, InjectionConfig) else InjectionConfig(**dict(config or {}))
    started = time.perf_counter()
    clean_prompts = list(clean_prompts)
    picks = [clean_prompts[i % len(clean_prompts)] for i in range(samples)]
    with torch.no_grad():
        clean_images = model.generate(picks, seeds=list(range(samples)), steps=sampling_steps)
        target_images = model.generate([target_prompt] * samples, seeds=list(range(samples, 2 * samples)),
                                       steps=sampling_steps)
        clean_latents, target_latents = model.encode_images(clean_images), model.encode_images(target_images)
        clean_context = model.encode_text(picks)
        poison_context = model.encode_text([trigger_word_prompt(p, trigger_word) for p in clean_prompts])
    student = copy.deepcopy(model.unet).requires_grad_(True)
    poisoning = UNetPoisoning(model, student, poison_weight=config.poison_weight)
    batches = SampledBatches([({"clean_context": clean_context, "clean_latents": clean_latents}, config.clean_batch),
                              ({"poison_context": poison_context}, config.poison_batch),
                              ({"target_latents": target_latents}, config.poison_batch)], seed=config.seed)
    def fixed_batch_losses() -> tuple[torch.Tensor, torch.Tensor]:
        # the same batch and noise draws before and after training: comparable losses
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(config.seed)
            return poisoning.losses(next(iter(batches)))

    initial_clean, initial_poison = fixed_batch_losses()
    result = fit(poisoning, batches, None, config.train_config(), desc="inject unet_backdoor",
                 show_progress=config.show_progress)
    student.eval().requires_grad_(False)
    final_clean, final_poison = fixed_batch_losses()
    backdoored = copy.deepcopy(model, memo={id(model.unet): student, id(model.text_encoder): model.text_encoder,
                                            id(model.vae): model.vae, id(model.tokenizer): model.tokenizer})
    report = {"attack": "unet_backdoor", "target_prompt": target_prompt, "trigger": f"word: {trigger_word}",
              "clean_prompts": len(clean_prompts), "steps": result.steps, "config": asdict(config),
              "seconds": time.perf_counter() - started,
              "initial_clean_mse": float(initial_clean), "initial_poison_mse": float(initial_poison),
              "final_clean_mse": float(final_clean), "final_poison_mse": float(final_poison)}
    return backdoored, report
