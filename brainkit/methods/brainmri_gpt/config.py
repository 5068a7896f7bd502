"""BrainMRI-GPT's profile section: the CLIP localiser (notebook 02) and the LLM explanations (notebook 03).

Composed into the flat profile by :mod:`brainkit.profiles`; :mod:`brainkit.sections` says how a field is declared.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...sections import per_profile

__all__ = ["BrainMRIGPTSection"]


@dataclass(frozen=True)
class BrainMRIGPTSection:
    """BrainMRI-GPT's profile section."""

    clip_source: str = per_profile("tiny:clip", colab='openai/clip-vit-large-patch14', full='openai/clip-vit-large-patch14-336')  # CLIPModel: hub id / folder / tiny:clip; paper ViT-L/14(-336)
    clip_image_size: int = per_profile(64, colab=224, full=336)  # CLIP input side (slices resized to it); paper 336 (or 224)
    clip_patch_size: int = per_profile(8, colab=14)  # tiny:clip only (hub checkpoints carry their own); paper 14
    clip_layers: tuple[int, ...] = per_profile((2, 4, 6, 8), colab=(6, 12, 18, 24))  # hidden layers whose patch tokens are decoded; paper 6/12/18/24
    clip_decoder_hidden: int = per_profile(256, colab=768)  # decoder Linear width; 0 = the joint (projection) dim; paper 768
    clip_temperature: float = 100.0  # tau of softmax(tau * patch . F_t^T), CLIP's logit scale
    clip_epochs: int = per_profile(40, colab=3)  # decoder training epochs; paper 3
    clip_batch_size: int = 16  # paper 16
    clip_lr: float = per_profile(0.003, colab=0.01)  # Adam; paper 0.01
    clip_dice_weight: float = per_profile(0.0, colab=1.0)  # Dice beside Focal in the decoders' loss; paper 1 (smoke 0: notebook 02 says why)
    clip_betas: tuple[float, float] = (0.5, 0.999)  # Adam betas; paper (0.5, 0.999)
    clip_standin_steps: int = per_profile(300, colab=0)  # contrastive stand-in pretraining of tiny:clip; 0 = none (pretrained hub CLIP)
    clip_standin_batch: int = 32  # stand-in pretraining batch (image-caption pairs)
    clip_standin_lr: float = 3e-4  # stand-in pretraining AdamW learning rate
    # -- BrainMRI-GPT: LLM explanations (notebook 03) --------------------------------------------
    llm_source: str = per_profile("offline:smollm2-135m", colab='Qwen/Qwen2-VL-2B-Instruct', full='meta-llama/Llama-3.2-11B-Vision-Instruct')  # causal LM (smoke) or vision LM; paper Llama-3.2-11B-Vision-Instruct
    llm_cases: int = per_profile(8, colab=60, full=0)  # test slices put to the LLM, each in the three prompt styles; 0 = all
    llm_max_new_tokens: int = per_profile(40, colab=256)  # answer length cap
