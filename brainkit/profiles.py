"""Profiles: one code path, three sizes (``smoke``, ``colab``, ``full``).

A profile is a frozen dataclass. Every size, epoch count, model id and layer index a notebook
uses comes from its profile; a notebook's ``parameters`` cell overrides single fields through
:func:`resolve`. Introduced in ``00_quickstart``.

``smoke`` runs on 2 CPU cores without network on generated data (BrainPhantom) and tiny or
package-shipped models; ``colab`` targets one 16 GB T4 with the real datasets and hub
checkpoints (language models in 4-bit); ``full`` is the papers' settings on one A100/H100.

Fields are flat and prefixed by the part of the course that reads them (``data_``, ``train_``,
and one prefix per method), so that ``resolve("smoke", train_epochs=2)`` names one field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, replace

from .errors import ConfigError

__all__ = ["Profile", "PROFILES", "resolve", "names", "describe"]


@dataclass(frozen=True)
class Profile:
    """The settings of one profile. Defaults are the ``smoke`` values."""

    # -- identity and hardware -------------------------------------------------------------
    name: str = "smoke"
    description: str = "CPU, 2 cores, no network: BrainPhantom data, tiny or package-shipped models"
    hardware: str = "CPU (2 cores)"
    device: str = "auto"  # auto | cpu | cuda | mps
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate)
    num_workers: int = 0  # DataLoader workers
    # Time budget per notebook, minutes (training notebooks get the larger one).
    budget_minutes: float = 4.0
    budget_training_minutes: float = 6.0

    # -- training loop defaults (brainkit.train.fit) ----------------------------------------
    train_grad_accum: int = 1
    train_patience: int = 0  # early stopping patience in epochs; 0 = off
    train_log_every: int = 10  # steps between history entries

    # -- data (brainkit.data) -------------------------------------------------------------
    data_source: str = "phantom"  # phantom | real
    data_subjects: int = 400  # phantom subjects generated once per run, all layouts (>= 60 test subjects in 2D sets)
    data_jobs: int = 2  # processes generating the phantom (capped by the CPU count)
    data_volume_shape: tuple[int, int, int] = (64, 64, 48)  # phantom grid (X, Y, Z) in RAS voxel order
    data_slice_size: int = 128  # 2D slice side in pixels
    # Method input sizes as the papers state them, (D, H, W) = (axial slices, rows, columns);
    # brainkit.data.transforms turns them into RAS (X, Y, Z) = (W, H, D).
    data_gemma_volume_size: tuple[int, int, int] = (32, 64, 64)  # BrainGemma3D input; paper (64, 128, 128)
    data_msd_volume_size: tuple[int, int, int] = (48, 64, 64)  # MedVisionLlama input; paper 128^3
    data_msd_spacing_mm: float = 4.0  # MSD chain resampling before resizing; 0 keeps the file's; MONAI/paper 1 mm
    data_brat_volume_size: tuple[int, int, int] = (32, 64, 64)  # brat input; paper (32, 256, 256)
    data_brat_spacing_mm: float = 4.0  # brat resampling before resizing; paper 1 mm
    data_cache: str = "memory"  # none | memory | disk: MONAI Dataset / CacheDataset / PersistentDataset

    # -- BrainMRI-GPT: CLIP localiser (notebook 02) ------------------------------------------------
    clip_source: str = "tiny:clip"  # CLIPModel: hub id / folder / tiny:clip; paper ViT-L/14(-336)
    clip_image_size: int = 64  # CLIP input side (slices resized to it); paper 336 (or 224)
    clip_patch_size: int = 8  # tiny:clip only (hub checkpoints carry their own); paper 14
    clip_layers: tuple[int, ...] = (2, 4, 6, 8)  # hidden layers whose patch tokens are decoded; paper 6/12/18/24
    clip_decoder_hidden: int = 256  # decoder Linear width; 0 = the joint (projection) dim; paper 768
    clip_temperature: float = 100.0  # tau of softmax(tau * patch . F_t^T), CLIP's logit scale
    clip_epochs: int = 40  # decoder training epochs; paper 3
    clip_batch_size: int = 16  # paper 16
    clip_lr: float = 0.003  # Adam; paper 0.01
    clip_dice_weight: float = 0.0  # Dice beside Focal in the decoders' loss; paper 1 (smoke 0: notebook 02 says why)
    clip_betas: tuple[float, float] = (0.5, 0.999)  # Adam betas; paper (0.5, 0.999)
    clip_standin_steps: int = 300  # contrastive stand-in pretraining of tiny:clip; 0 = none (pretrained hub CLIP)
    clip_standin_batch: int = 32  # stand-in pretraining batch (image-caption pairs)
    clip_standin_lr: float = 3e-4  # stand-in pretraining AdamW learning rate

    # -- BrainMRI-GPT: LLM explanations (notebook 03) --------------------------------------------
    llm_source: str = "offline:smollm2-135m"  # causal LM (smoke) or vision LM; paper Llama-3.2-11B-Vision-Instruct
    llm_cases: int = 8  # test slices put to the LLM, each in the three prompt styles; 0 = all
    llm_max_new_tokens: int = 40  # answer length cap

    # -- BrainGemma3D: inflation, report training and evaluation (notebooks 04-06) ---------------
    gemma_subjects: int = 0  # phantom subjects; 0 = data_subjects (the set other notebooks share; 70/10/20 split: >= 60 test at >= 300)
    gemma_vision_source: str = "tiny:siglip"  # 2D vision tower to inflate; paper google/medsiglip-448
    gemma_standin_steps: int = 2000  # supervised 2D pretraining of tiny:siglip on phantom slices (cached); 0 = none (hub)
    gemma_standin_batch: int = 32  # slices per stand-in pretraining step
    gemma_standin_lr: float = 0.002  # stand-in pretraining AdamW learning rate
    gemma_patch_size: int = 8  # in-plane patch of the tiny stand-in tower; hub towers keep their own (MedSigLIP 14)
    gemma_depth_kernel: int = 4  # Conv3d depth kernel of the inflated patch embedding; card/code 2
    gemma_depth_stride: int = 4  # depth stride; released code 1 (overlapping slabs)
    gemma_init: str = "centre"  # centre (card) | mean (released code, I3D)
    gemma_pos: str = "interpolate"  # interpolate (pretrained 2D grid + depth) | fixed (released code)
    gemma_probe_steps: int = 300  # 3D fine-tune steps of the laterality probe (notebook 04; the issue measured at 300)
    gemma_probe_batch: int = 16  # volumes per probe step
    gemma_probe_lr: float = 0.0005  # probe fine-tune AdamW learning rate
    gemma_lm_source: str = "tiny:gemma3"  # report LM; paper google/medgemma-1.5-4b-it (its language model)
    gemma_lm_4bit: bool = False  # NF4 + double quantisation (bitsandbytes); a tiny: random LM cannot be quantised
    gemma_lm_pretrain_steps: int = 300  # smoke only: next-token pre-training of the tiny LM on the training reports; 0 = none
    gemma_lm_pretrain_lr: float = 0.003  # AdamW learning rate of that pre-training (smoke only; the card's LM comes pretrained)
    gemma_compressor: str = "perceiver"  # perceiver (card) | pool (released code)
    gemma_num_tokens: int = 32  # visual tokens after the compressor
    gemma_lora_rank: int = 4  # LoRA rank on q/k/v/o (card 4; released code 16)
    gemma_batch: int = 8  # volume-report pairs per step, every phase (Phase 1 needs >= 2)
    gemma_phase1_steps: int = 60  # InfoNCE grounding steps; paper 100 epochs (~4100 steps of 8 on 328 training subjects)
    gemma_phase2a_steps: int = 100  # projector warm-up steps; paper 100 epochs
    gemma_phase2b_steps: int = 100  # projector + LoRA steps; paper 100 epochs
    gemma_lr: float = 0.001  # AdamW learning rate of every phase
    gemma_tau: float = 0.07  # Phase 1 InfoNCE temperature (card)
    gemma_max_new_tokens: int = 256  # generation budget (card 256)
    gemma_lime_cases: int = 2  # test cases explained with 3D LIME (notebook 06)
    gemma_lime_samples: int = 100  # LIME perturbations per case (card 100)
    gemma_lime_segments: int = 20  # SLIC supervoxels (card 20)

    # -- brat: multi-view pretraining, retrieval, downstream (notebooks 08-09) --------------------
    brat_volume_size: tuple[int, int, int] | None = None  # brat input (D, H, W); None = data_brat_volume_size (32, 64, 64: 16x32x32 memorised, never generalised); paper (32, 256, 256)
    brat_backbone: str = "densenet-tiny"  # densenet121 (MONAI DenseNet121) | densenet-tiny (same class, small); paper densenet121
    brat_feature_stage: str = "denseblock2"  # last DenseNet.features stage kept (8x: 8x8x4 = 256 tokens at 64x64x32); paper all (norm5, 32x)
    brat_bert: str = "offline:minilm-l6"  # BERT of the Q-Former and the text encoder; paper BiomedBERT
    brat_qformer_layers: int = 1  # first n BERT layers in the Q-Former (0 = all; layer 0 cross-attends); paper 12
    brat_num_queries: int = 16  # learnable queries N_Q; paper 32
    brat_embed_dim: int = 128  # joint space; paper 256 (BLIP-2)
    brat_train_text: bool = False  # fine-tune the text BERT (False: frozen, outputs cached); paper True
    brat_max_text_tokens: int = 128  # report tokens; paper 256
    brat_max_sentences: int = 20  # paper 20
    brat_itg_max_tokens: int = 24  # report tokens predicted by the ITG loss (the first sentence: type, side, lobe); paper all
    brat_batch_size: int = 16  # image-report pairs per step; paper 32 (25-32)
    brat_steps: int = 150  # pretraining steps of each configuration (brat and every ablation; ~9 epochs of 280 pairs); paper ~epochs over 75k pairs
    brat_lr_backbone: float = 0.001  # AdamW lr of the DenseNet and new layers; paper 5e-4
    brat_lr_bert: float = 0.0002  # AdamW lr of the BERT-initialised Q-Former; paper 5e-5
    brat_dpp_weight: float = 0.05  # weight of -log det(L + eps I); paper 1
    brat_dpp_eps: float = 0.01  # eps of the DPP loss; paper "small" (1e-4 swamps InfoNCE at start, NOTES.md)
    brat_dpp_normalize: bool = True  # divide the DPP loss by N_Q
    brat_dpp_warmup_steps: int = 30  # linear ramp of the DPP weight; paper none
    brat_itg_weight: float = 2.0  # weight of the ITG loss (smoke: 2, the image side learns mostly from it: t2i R@5 0.14 vs 0.11 at 1, 0.01 at 0); paper 1
    brat_flip_prob: float = 0.5  # left-right mirroring of a training pair, report sides swapped; paper none
    brat_center_text: bool = True  # subtract the mean training-report embedding before the text projection; paper no
    brat_cls_steps: int = 0  # downstream classification fine-tune steps per run at 10/100 % labels (0: linear probe of frozen features; notebook 09)
    brat_cls_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)  # label fractions; paper 1/10/100 %
    brat_bootstrap: int = 1000  # bootstrap resamples of the test set for confidence intervals
    brat_gen_steps: int = 150  # report-generation (MLP bridge + small causal LM) training steps (notebook 09)
    brat_gen_lm_layers: int = 2  # layers of the small causal LM trained on the reports in smoke; 0 = load brat_gen_lm
    brat_gen_lm: str = "meta-llama/Llama-3.2-1B"  # causal LM of colab/full (paper Llama-3.2-1B)

    # -- MedVisionLlama: 3D segmentation with a frozen LLM layer (notebook 07) ---------------------
    mvl_subjects: int = 160  # MSD cases used (70/10/20 split by case: >= 30 test volumes); 0 = all
    mvl_llm_source: str = "tiny:llama"  # causal LM whose layer is frozen in; paper meta-llama/Llama-3.1-8B
    mvl_llm_layer: int = -1  # index of that decoder layer; released code: the last
    mvl_llm_position: str = "after"  # after the ViT encoder (README) | before it (released code)
    mvl_mapper: str = "linear"  # lora (released: frozen random Linear + rank-r LoRA) | linear (trainable; learnt faster in smoke)
    mvl_lora_rank: int = 4  # released 4
    mvl_bert_source: str = "tiny:bert"  # layer of the BERT-family variant; paper BioBERT / ClinicalBERT / BioGPT
    mvl_patch_size: tuple[int, int, int] = (8, 8, 8)  # ViT patch (D, H, W); paper 8^3
    mvl_roi_size: tuple[int, int, int] | None = (24, 32, 32)  # training patch (D, H, W), half tumour-centred; sliding window beyond it; None = the volume
    mvl_hidden_size: int = 96  # ViT width
    mvl_mlp_dim: int = 192  # ViT MLP width
    mvl_layers: int = 4  # ViT encoder blocks
    mvl_heads: int = 4  # attention heads
    mvl_decoder: str = "conv"  # conv (upsampling decoder on the token grid) | linear (released fold-back head)
    mvl_decoder_channels: tuple[int, ...] = (32, 16)  # conv decoder: channels of its x2 upsampling stages
    mvl_input_skip: int = 1  # conv decoder: 1 = intensity gate (logits a*x + b, a and b from the decoder), 0 = none
    mvl_loss: str = "dicece"  # dicece | dicefocal (MONAI, soft Dice)
    mvl_dice_batch: bool = True  # Dice term over the whole batch (True) or per volume (False)
    mvl_lr: float = 0.003  # AdamW peak learning rate (one-cycle); paper 2e-3
    mvl_batch_size: int = 16  # paper 4 (whole volumes; smoke trains on 16 small patches)
    mvl_steps: int = 400  # optimiser steps per training run; paper 100 epochs
    mvl_eval_every: int = 200  # steps between validations (the checkpoint is chosen on validation Dice)
    mvl_seeds: int = 2  # seeds of the MedVisionLlama vs ViT comparison
    mvl_fractions: tuple[float, ...] = (0.1,)  # training-set fractions run besides the full set; paper 10 / 30 %
    mvl_fraction_steps: int = 100  # steps of the fraction runs; 0 = mvl_steps (smoke: shorter, to fit the budget)
    mvl_min_component_sizes: tuple[int, ...] = (0, 50, 100, 200, 400)  # post-processing candidates (voxels), chosen on validation
    mvl_nsd_tolerance_mm: float = 2.0  # NSD (surface Dice) tolerance; the README does not state one
    mvl_sw_overlap: float = 0.5  # sliding-window overlap at inference

    def to_dict(self) -> dict[str, typing.Any]:
        """The profile as a plain dict (tuples kept), e.g. to record with a run's metrics."""
        return dataclasses.asdict(self)


SMOKE = Profile()

COLAB = replace(
    SMOKE,
    name="colab",
    description="one T4 (16 GB): the real public datasets, hub checkpoints, language models in 4-bit",
    hardware="1x T4 16 GB",
    mixed_precision="fp16",
    num_workers=2,
    budget_minutes=120.0,
    budget_training_minutes=120.0,
    data_source="real",
    data_subjects=0,
    data_volume_shape=(128, 128, 64),
    data_slice_size=224,
    data_gemma_volume_size=(64, 128, 128),
    data_msd_volume_size=(96, 96, 96),
    data_msd_spacing_mm=1.0,
    data_brat_volume_size=(32, 256, 256),
    data_brat_spacing_mm=1.0,
    data_cache="disk",
    clip_source="openai/clip-vit-large-patch14",
    clip_image_size=224,
    clip_patch_size=14,
    clip_layers=(6, 12, 18, 24),
    clip_decoder_hidden=768,
    clip_epochs=3,
    clip_lr=0.01,
    clip_dice_weight=1.0,
    clip_standin_steps=0,
    llm_source="Qwen/Qwen2-VL-2B-Instruct",
    llm_cases=60,
    llm_max_new_tokens=256,
    gemma_subjects=0,
    gemma_vision_source="google/medsiglip-448",
    gemma_standin_steps=0,
    gemma_depth_kernel=2,
    gemma_depth_stride=2,
    gemma_probe_steps=600,
    gemma_probe_batch=4,
    gemma_probe_lr=0.0001,
    gemma_lm_source="google/medgemma-1.5-4b-it",
    gemma_lm_4bit=True,
    gemma_lm_pretrain_steps=0,
    gemma_batch=4,
    gemma_phase1_steps=600,
    gemma_phase2a_steps=600,
    gemma_phase2b_steps=1200,
    gemma_lr=0.0002,
    gemma_lime_cases=4,
    brat_volume_size=None,
    brat_backbone="densenet121",
    brat_feature_stage="norm5",
    brat_bert="microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext",
    brat_qformer_layers=0,
    brat_num_queries=32,
    brat_embed_dim=256,
    brat_train_text=True,
    brat_max_text_tokens=256,
    brat_itg_max_tokens=256,
    brat_batch_size=8,
    brat_steps=3000,
    brat_lr_backbone=0.0005,
    brat_lr_bert=0.00005,
    brat_dpp_weight=1.0,
    brat_dpp_eps=0.0001,
    brat_dpp_normalize=False,
    brat_dpp_warmup_steps=1000,
    brat_itg_weight=1.0,
    brat_flip_prob=0.0,
    brat_center_text=False,
    brat_cls_steps=500,
    brat_gen_steps=2000,
    brat_gen_lm_layers=0,
    mvl_subjects=0,
    mvl_roi_size=None,
    mvl_llm_source="meta-llama/Llama-3.2-1B",
    mvl_bert_source="dmis-lab/biobert-v1.1",
    mvl_hidden_size=384,
    mvl_mlp_dim=1536,
    mvl_layers=8,
    mvl_heads=8,
    mvl_steps=3000,
    mvl_seeds=3,
    mvl_fractions=(0.1, 0.3),
    mvl_eval_every=250,
    mvl_batch_size=4,
    mvl_lr=0.002,
    mvl_fraction_steps=0,
    mvl_mapper="lora",
)

FULL = replace(
    SMOKE,
    name="full",
    description="one A100/H100: the papers' settings",
    hardware="1x A100/H100",
    mixed_precision="bf16",
    num_workers=8,
    budget_minutes=24 * 60.0,
    budget_training_minutes=24 * 60.0,
    data_source="real",
    data_subjects=0,
    data_volume_shape=(128, 128, 128),
    data_slice_size=336,
    data_gemma_volume_size=(64, 128, 128),
    data_msd_volume_size=(128, 128, 128),
    data_msd_spacing_mm=1.0,
    data_brat_volume_size=(32, 256, 256),
    data_brat_spacing_mm=1.0,
    data_cache="disk",
    clip_source="openai/clip-vit-large-patch14-336",
    clip_image_size=336,
    clip_patch_size=14,
    clip_layers=(6, 12, 18, 24),
    clip_decoder_hidden=768,
    clip_epochs=3,
    clip_lr=0.01,
    clip_dice_weight=1.0,
    clip_standin_steps=0,
    llm_source="meta-llama/Llama-3.2-11B-Vision-Instruct",
    llm_cases=0,
    llm_max_new_tokens=256,
    gemma_subjects=0,
    gemma_vision_source="google/medsiglip-448",
    gemma_standin_steps=0,
    gemma_depth_kernel=2,
    gemma_depth_stride=1,
    gemma_probe_steps=2000,
    gemma_probe_batch=8,
    gemma_probe_lr=0.0001,
    gemma_lm_source="google/medgemma-1.5-4b-it",
    gemma_lm_4bit=True,
    gemma_lm_pretrain_steps=0,
    gemma_batch=8,
    gemma_phase1_steps=4100,
    gemma_phase2a_steps=4100,
    gemma_phase2b_steps=4100,
    gemma_lr=0.0002,
    gemma_lime_cases=20,
    brat_volume_size=None,
    brat_backbone="densenet121",
    brat_feature_stage="norm5",
    brat_bert="microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext",
    brat_qformer_layers=0,
    brat_num_queries=32,
    brat_embed_dim=256,
    brat_train_text=True,
    brat_max_text_tokens=256,
    brat_itg_max_tokens=256,
    brat_batch_size=32,
    brat_steps=30000,
    brat_lr_backbone=0.0005,
    brat_lr_bert=0.00005,
    brat_dpp_weight=1.0,
    brat_dpp_eps=0.0001,
    brat_dpp_normalize=False,
    brat_dpp_warmup_steps=1000,
    brat_itg_weight=1.0,
    brat_flip_prob=0.0,
    brat_center_text=False,
    brat_cls_steps=3000,
    brat_gen_steps=20000,
    brat_gen_lm_layers=0,
    mvl_subjects=0,
    mvl_roi_size=None,
    mvl_llm_source="meta-llama/Llama-3.1-8B",
    mvl_bert_source="dmis-lab/biobert-v1.1",
    mvl_hidden_size=768,
    mvl_mlp_dim=3072,
    mvl_layers=12,
    mvl_heads=12,
    mvl_decoder="linear",
    mvl_input_skip=0,
    mvl_steps=8500,
    mvl_eval_every=85,
    mvl_seeds=5,
    mvl_fractions=(0.1, 0.3),
    mvl_batch_size=4,
    mvl_lr=0.002,
    mvl_loss="dicefocal",
    mvl_fraction_steps=0,
    mvl_mapper="lora",
)

PROFILES: dict[str, Profile] = {p.name: p for p in (SMOKE, COLAB, FULL)}


def names() -> list[str]:
    """The valid profile names."""
    return list(PROFILES)


def _field_types() -> dict[str, typing.Any]:
    return typing.get_type_hints(Profile)


def _check_type(name: str, value: typing.Any, hint: typing.Any) -> typing.Any:
    """Check (and, for lists given where a tuple is declared, convert) one override."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"profile field {name!r}: expected a tuple, found {type(value).__name__} {value!r}")
        args = typing.get_args(hint)
        value = tuple(value)
        if args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"profile field {name!r}: expected {len(args)} values, found {len(value)}: {value!r}")
        elem = args[0] if args else None
        if elem in (int, float) and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"profile field {name!r}: expected numbers, found {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint)]
        if value is None and type(None) in args:
            return value
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(name, value, a)
            except ConfigError:
                continue
        raise ConfigError(f"profile field {name!r}: expected {hint}, found {type(value).__name__} {value!r}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"profile field {name!r}: expected {hint.__name__}, found {type(value).__name__} {value!r}")
    return value


def resolve(name: str | Profile, /, **overrides: typing.Any) -> Profile:
    """Return the profile ``name`` with single fields overridden.

    >>> resolve("smoke", data_subjects=32).data_subjects
    32

    An unknown profile or field raises :class:`~brainkit.errors.ConfigError` listing the valid
    ones; a value of the wrong type raises too. ``None`` overrides are ignored, so a notebook
    parameter left at ``None`` keeps the profile's value.
    """
    if isinstance(name, Profile):
        base = name
    else:
        if not isinstance(name, str) or name not in PROFILES:
            raise ConfigError(f"unknown profile {name!r}: expected one of {', '.join(PROFILES)}")
        base = PROFILES[name]
    hints = _field_types()
    unknown = sorted(k for k in overrides if k not in hints)
    if unknown:
        raise ConfigError(
            f"unknown profile field(s) {', '.join(map(repr, unknown))}: valid fields are {', '.join(hints)}"
        )
    checked = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "name":
            raise ConfigError("profile field 'name' cannot be overridden: pass another profile name instead")
        checked[key] = _check_type(key, value, hints[key])
    return replace(base, **checked)


def describe() -> list[dict[str, typing.Any]]:
    """Rows for a profiles table: one per field, with the value in each profile."""
    rows = []
    for f in dataclasses.fields(Profile):
        rows.append({"field": f.name, **{p: getattr(prof, f.name) for p, prof in PROFILES.items()}})
    return rows

