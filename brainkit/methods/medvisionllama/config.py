"""MedVisionLlama's profile section: 3D segmentation with a frozen LLM layer (notebook 07).

Composed into the flat profile by :mod:`brainkit.profiles`; :mod:`brainkit.sections` says how a field is declared.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...sections import per_profile

__all__ = ["MedVisionLlamaSection"]


@dataclass(frozen=True)
class MedVisionLlamaSection:
    """MedVisionLlama's profile section."""

    mvl_subjects: int = per_profile(160, colab=0)  # MSD cases used (70/10/20 split by case: >= 30 test volumes); 0 = all
    mvl_llm_source: str = per_profile("tiny:llama", colab='meta-llama/Llama-3.2-1B', full='meta-llama/Llama-3.1-8B')  # causal LM whose layer is frozen in; paper meta-llama/Llama-3.1-8B
    mvl_llm_layer: int = -1  # index of that decoder layer; released code: the last
    mvl_llm_position: str = "after"  # after the ViT encoder (README) | before it (released code)
    mvl_mapper: str = per_profile("linear", colab='lora')  # lora (released: frozen random Linear + rank-r LoRA) | linear (trainable; learnt faster in smoke)
    mvl_lora_rank: int = 4  # released 4
    mvl_bert_source: str = per_profile("tiny:bert", colab='dmis-lab/biobert-v1.1')  # layer of the BERT-family variant; paper BioBERT / ClinicalBERT / BioGPT
    mvl_patch_size: tuple[int, int, int] = (8, 8, 8)  # ViT patch (D, H, W); paper 8^3
    mvl_roi_size: tuple[int, int, int] | None = per_profile((24, 32, 32), colab=None)  # training patch (D, H, W), half tumour-centred; sliding window beyond it; None = the volume
    mvl_hidden_size: int = per_profile(96, colab=384, full=768)  # ViT width
    mvl_mlp_dim: int = per_profile(192, colab=1536, full=3072)  # ViT MLP width
    mvl_layers: int = per_profile(4, colab=8, full=12)  # ViT encoder blocks
    mvl_heads: int = per_profile(4, colab=8, full=12)  # attention heads
    mvl_decoder: str = per_profile("conv", full='linear')  # conv (upsampling decoder on the token grid) | linear (released fold-back head)
    mvl_decoder_channels: tuple[int, ...] = (32, 16)  # conv decoder: channels of its x2 upsampling stages
    mvl_input_skip: int = per_profile(1, full=0)  # conv decoder: 1 = intensity gate (logits a*x + b, a and b from the decoder), 0 = none
    mvl_loss: str = per_profile("dicece", full='dicefocal')  # dicece | dicefocal (MONAI, soft Dice)
    mvl_dice_batch: bool = True  # Dice term over the whole batch (True) or per volume (False)
    mvl_lr: float = per_profile(0.003, colab=0.002)  # AdamW peak learning rate (one-cycle); paper 2e-3
    mvl_batch_size: int = per_profile(16, colab=4)  # paper 4 (whole volumes; smoke trains on 16 small patches)
    mvl_steps: int = per_profile(400, colab=3000, full=8500)  # optimiser steps per training run; paper 100 epochs
    mvl_eval_every: int = per_profile(200, colab=250, full=85)  # steps between validations (the checkpoint is chosen on validation Dice)
    mvl_seeds: int = per_profile(2, colab=3, full=5)  # seeds of the MedVisionLlama vs ViT comparison
    mvl_fractions: tuple[float, ...] = per_profile((0.1,), colab=(0.1, 0.3))  # training-set fractions run besides the full set; paper 10 / 30 %
    mvl_fraction_steps: int = per_profile(100, colab=0)  # steps of the fraction runs; 0 = mvl_steps (smoke: shorter, to fit the budget)
    mvl_min_component_sizes: tuple[int, ...] = (0, 50, 100, 200, 400)  # post-processing candidates (voxels), chosen on validation
    mvl_nsd_tolerance_mm: float = 2.0  # NSD (surface Dice) tolerance; the README does not state one
    mvl_sw_overlap: float = 0.5  # sliding-window overlap at inference
