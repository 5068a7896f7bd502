"""BrainGemma3D's profile section: inflation (notebook 04), report training (05) and evaluation (06).

Composed into the flat profile by :mod:`brainkit.profiles`; :mod:`brainkit.sections` says how a field is declared.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...sections import per_profile

__all__ = ["BrainGemma3DSection"]


@dataclass(frozen=True)
class BrainGemma3DSection:
    """BrainGemma3D's profile section."""

    gemma_subjects: int = 0  # phantom subjects; 0 = data_subjects (the set other notebooks share; 70/10/20 split: >= 60 test at >= 300)
    gemma_vision_source: str = per_profile("tiny:siglip", colab='google/medsiglip-448')  # 2D vision tower to inflate; paper google/medsiglip-448
    gemma_standin_steps: int = per_profile(2000, colab=0)  # supervised 2D pretraining of tiny:siglip on phantom slices (cached); 0 = none (hub)
    gemma_standin_batch: int = 32  # slices per stand-in pretraining step
    gemma_standin_lr: float = 0.002  # stand-in pretraining AdamW learning rate
    gemma_patch_size: int = 8  # in-plane patch of the tiny stand-in tower; hub towers keep their own (MedSigLIP 14)
    gemma_depth_kernel: int = per_profile(4, colab=2)  # Conv3d depth kernel of the inflated patch embedding; card/code 2
    gemma_depth_stride: int = per_profile(4, colab=2, full=1)  # depth stride; released code 1 (overlapping slabs)
    gemma_init: str = "centre"  # centre (card) | mean (released code, I3D)
    gemma_pos: str = "interpolate"  # interpolate (pretrained 2D grid + depth) | fixed (released code)
    gemma_probe_steps: int = per_profile(300, colab=600, full=2000)  # 3D fine-tune steps of the laterality probe (notebook 04; the issue measured at 300)
    gemma_probe_batch: int = per_profile(16, colab=4, full=8)  # volumes per probe step
    gemma_probe_lr: float = per_profile(0.0005, colab=0.0001)  # probe fine-tune AdamW learning rate
    gemma_lm_source: str = per_profile("tiny:gemma3", colab='google/medgemma-1.5-4b-it')  # report LM; paper google/medgemma-1.5-4b-it (its language model)
    gemma_lm_4bit: bool = per_profile(False, colab=True)  # NF4 + double quantisation (bitsandbytes); a tiny: random LM cannot be quantised
    gemma_lm_pretrain_steps: int = per_profile(300, colab=0)  # smoke only: next-token pre-training of the tiny LM on the training reports; 0 = none
    gemma_lm_pretrain_lr: float = 0.003  # AdamW learning rate of that pre-training (smoke only; the card's LM comes pretrained)
    gemma_compressor: str = "perceiver"  # perceiver (card) | pool (released code)
    gemma_num_tokens: int = 32  # visual tokens after the compressor
    gemma_lora_rank: int = 4  # LoRA rank on q/k/v/o (card 4; released code 16)
    gemma_batch: int = per_profile(8, colab=4, full=8)  # volume-report pairs per step, every phase (Phase 1 needs >= 2)
    gemma_phase1_steps: int = per_profile(60, colab=600, full=4100)  # InfoNCE grounding steps; paper 100 epochs (~4100 steps of 8 on 328 training subjects)
    gemma_phase2a_steps: int = per_profile(100, colab=600, full=4100)  # projector warm-up steps; paper 100 epochs
    gemma_phase2b_steps: int = per_profile(100, colab=1200, full=4100)  # projector + LoRA steps; paper 100 epochs
    gemma_lr: float = per_profile(0.001, colab=0.0002)  # AdamW learning rate of every phase
    gemma_tau: float = 0.07  # Phase 1 InfoNCE temperature (card)
    gemma_max_new_tokens: int = 256  # generation budget (card 256)
    gemma_lime_cases: int = per_profile(2, colab=4, full=20)  # test cases explained with 3D LIME (notebook 06)
    gemma_lime_samples: int = 100  # LIME perturbations per case (card 100)
    gemma_lime_segments: int = 20  # SLIC supervoxels (card 20)
