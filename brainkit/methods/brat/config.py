"""brat's profile section: multi-view pretraining, retrieval and downstream tasks (notebooks 08-09).

Composed into the flat profile by :mod:`brainkit.profiles`; :mod:`brainkit.sections` says how a field is declared.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...sections import per_profile

__all__ = ["BratSection"]


@dataclass(frozen=True)
class BratSection:
    """brat's profile section."""

    brat_volume_size: tuple[int, int, int] | None = None  # brat input (D, H, W); None = data_brat_volume_size (32, 64, 64: 16x32x32 memorised, never generalised); paper (32, 256, 256)
    brat_backbone: str = per_profile("densenet-tiny", colab='densenet121')  # densenet121 (MONAI DenseNet121) | densenet-tiny (same class, small); paper densenet121
    brat_feature_stage: str = per_profile("denseblock2", colab='norm5')  # last DenseNet.features stage kept (8x: 8x8x4 = 256 tokens at 64x64x32); paper all (norm5, 32x)
    brat_bert: str = per_profile("offline:minilm-l6", colab='microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext')  # BERT of the Q-Former and the text encoder; paper BiomedBERT
    brat_qformer_layers: int = per_profile(1, colab=0)  # first n BERT layers in the Q-Former (0 = all; layer 0 cross-attends); paper 12
    brat_num_queries: int = per_profile(16, colab=32)  # learnable queries N_Q; paper 32
    brat_embed_dim: int = per_profile(128, colab=256)  # joint space; paper 256 (BLIP-2)
    brat_train_text: bool = per_profile(False, colab=True)  # fine-tune the text BERT (False: frozen, outputs cached); paper True
    brat_max_text_tokens: int = per_profile(128, colab=256)  # report tokens; paper 256
    brat_max_sentences: int = 20  # paper 20
    brat_itg_max_tokens: int = per_profile(24, colab=256)  # report tokens predicted by the ITG loss (the first sentence: type, side, lobe); paper all
    brat_batch_size: int = per_profile(16, colab=8, full=32)  # image-report pairs per step; paper 32 (25-32)
    brat_steps: int = per_profile(100, colab=3000, full=30000)  # pretraining steps of each configuration (brat and every ablation; ~6 epochs of 280 pairs: all seven Table 2 rows fit notebook 08, and brat stayed above 2x chance on 2 prototype seeds, t2i R@5 0.21 / 0.19); paper ~epochs over 75k pairs
    brat_lr_backbone: float = per_profile(0.001, colab=0.0005)  # AdamW lr of the DenseNet and new layers; paper 5e-4
    brat_lr_bert: float = per_profile(0.0002, colab=5e-05)  # AdamW lr of the BERT-initialised Q-Former; paper 5e-5
    brat_dpp_weight: float = 1.0  # weight of -log det(L + eps I); paper 1. Smoke at 100 steps, brat t2i R@5 / attention cosine (seeds 0, 1): 0.05 -> 0.21, 0.19 / 0.78, 0.53; 0.1 -> 0.18, 0.23 / 0.31, 0.17; 1.0 -> 0.15, 0.15 / 0.02, 0.04 (brat w/o QD ~0.93)
    brat_dpp_eps: float = per_profile(0.01, colab=0.0001)  # eps of the DPP loss; paper "small" (1e-4 swamps InfoNCE at the start)
    brat_dpp_normalize: bool = per_profile(True, colab=False)  # divide the DPP loss by N_Q
    brat_dpp_warmup_steps: int = per_profile(30, colab=1000)  # linear ramp of the DPP weight; paper none
    brat_itg_weight: float = per_profile(2.0, colab=1.0)  # weight of the ITG loss (smoke: 2, the image side learns mostly from it: t2i R@5 0.14 vs 0.11 at 1, 0.01 at 0); paper 1
    brat_flip_prob: float = per_profile(0.5, colab=0.0)  # left-right mirroring of a training pair, report sides swapped; paper none
    brat_center_text: bool = per_profile(True, colab=False)  # subtract the mean training-report embedding before the text projection; paper no
    brat_cls_steps: int = per_profile(0, colab=500, full=3000)  # downstream classification fine-tune steps per run at 10/100 % labels (0: linear probe of frozen features; notebook 09)
    brat_cls_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)  # label fractions; paper 1/10/100 %
    brat_bootstrap: int = 1000  # bootstrap resamples of the test set for confidence intervals
    brat_gen_steps: int = per_profile(100, colab=2000, full=20000)  # report-generation training steps (notebook 09): the small LM on the reports, then the MLP bridge
    brat_gen_lm_layers: int = per_profile(2, colab=0)  # layers of the small causal LM trained on the reports in smoke; 0 = load brat_gen_lm
    brat_gen_lm: str = "meta-llama/Llama-3.2-1B"  # causal LM of colab/full (paper Llama-3.2-1B)
