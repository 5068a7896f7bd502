"""The report generator of BrainGemma3D: 3D vision tower -> compressor -> projector -> causal LM.

Introduced in ``05_braingemma3d_training`` (the three training stages) and evaluated in
``06_braingemma3d_evaluation`` (BrainGemma3D's model card); brat's report generation reuses it.

::

    volume (B, 1, D, H, W) --tower--> tokens (B, N, d_v) --compressor--> (B, K, d_v)
        --projector: Linear -> GELU -> Linear--> (B, K, d_lm) --x vis_scale--> visual tokens
    LM input: [<bos>] [K visual tokens] [prompt tokens] [report tokens] [<eos>]

The vision tower is any module that maps a volume to ``(B, N, d_v)`` tokens and has a
``hidden_size`` attribute (the inflated SigLIP of :mod:`brainkit.methods.braingemma3d.inflate`, or brat's
encoder). Gemma 3 multiplies its token embeddings by ``sqrt(d_lm)`` inside the embedding layer, so
the visual tokens, which bypass it, must be brought to the same scale: the learnable scalar
``vis_scale`` does that (:meth:`ReportVLM.calibrate_vis_scale` sets its starting value so that
visual and text embeddings have the same root-mean-square).

The language model comes from :func:`load_language_model`: any ``brainkit.hub`` source,
optionally in 4-bit NF4 with double quantisation (bitsandbytes; works on CPU too) and prepared for
k-bit training (peft), frozen; :meth:`ReportVLM.add_lora` puts peft LoRA adapters on the attention
projections q/k/v/o (rank 4 as the card; the released code uses r=16, alpha=32).

Training stages (:meth:`ReportVLM.set_stage`): ``"phase1"`` InfoNCE grounding (tower, compressor,
projector and ``vis_scale`` trainable; LM frozen; text side = mean-pooled LM hidden states of the
report), ``"phase2a"`` projector warm-up (projector + ``vis_scale``; next-token CE on the report
tokens only), ``"phase2b"`` projector + LoRA.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from .errors import CheckpointError, ConfigError, DataError
from .losses import info_nce

__all__ = ["ReportVLM", "load_language_model", "lora_config", "check_volume", "PerceiverResampler",
           "AdaptivePoolCompressor", "make_compressor", "COMPRESSORS", "CANONICAL_PROMPT", "GENERATION",
           "LORA_TARGETS", "STAGES", "visual_tokens_zeroed", "word_tokenizer"]

log = logging.getLogger(__name__)

#: The instruction that follows the visual tokens (our wording; the released code has its own).
CANONICAL_PROMPT = "Brain MRI, FLAIR, axial volume. Findings:"
#: The model card's generation settings.
GENERATION: dict[str, Any] = dict(max_new_tokens=256, do_sample=True, temperature=0.1, top_p=0.9,
                                  repetition_penalty=1.2, no_repeat_ngram_size=3)
#: The attention projections that get LoRA adapters.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
STAGES = ("phase1", "phase2a", "phase2b", "frozen")


def check_volume(volume: Any, name: str = "volume", channels: int | None = 1) -> torch.Tensor:
    """A ``(B, C, D, H, W)`` float tensor without NaN/inf, or a :class:`DataError` saying what is wrong.

    A 4D ``(B, D, H, W)`` tensor gets the channel axis added when ``channels == 1``.
    """
    if not isinstance(volume, torch.Tensor):
        raise DataError(None, name, "a torch.Tensor (B, C, D, H, W)", type(volume).__name__)
    if volume.dim() == 4 and channels == 1:
        volume = volume.unsqueeze(1)
    if volume.dim() != 5:
        raise DataError(None, name, "a 5D tensor (B, C, D, H, W) or 4D (B, D, H, W)",
                        f"{volume.dim()}D shape {tuple(volume.shape)}")
    if channels is not None and volume.shape[1] != channels:
        raise DataError(None, name, f"{channels} channel(s) on axis 1", f"shape {tuple(volume.shape)}")
    if not volume.is_floating_point():
        volume = volume.float()
    if not bool(torch.isfinite(volume).all()):
        n = int((~torch.isfinite(volume)).sum())
        raise DataError(None, name, "finite voxel values", f"{n} NaN/inf voxels")
    return volume


def lora_config(rank: int = 4, alpha: int | None = None, dropout: float = 0.05):
    """peft ``LoraConfig`` on q/k/v/o for a causal LM (card: rank 4; alpha defaults to 2 x rank)."""
    from peft import LoraConfig

    if int(rank) < 1:
        raise ConfigError(f"LoRA rank: expected >= 1, found {rank}")
    return LoraConfig(r=int(rank), lora_alpha=int(alpha if alpha is not None else 2 * rank), lora_dropout=dropout,
                      target_modules=list(LORA_TARGETS), bias="none", task_type="CAUSAL_LM")


def word_tokenizer(texts: Sequence[str]):
    """A word-level tokenizer (lower-cased, split on whitespace and punctuation) fitted on ``texts``, as a
    transformers ``PreTrainedTokenizerFast`` with ``[PAD]`` / ``[BOS]`` / ``[EOS]`` / ``[UNK]`` and ``[BOS]`` put
    before every text. The tokenizer of the smoke profile's tiny report LMs: a report is a few dozen words, not
    hundreds of bytes. Used by ``05_braingemma3d_training`` and ``09_brat_evaluation``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise DataError(None, "texts", "a non-empty sequence of strings", f"{type(texts).__name__} of {len(texts)}")
    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[BOS]", "[EOS]", "[UNK]"]))
    tk.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]",
                                   unk_token="[UNK]", clean_up_tokenization_spaces=True)


def load_language_model(source: str, *, quantize_4bit: bool = False, cache_dir: Any = None, seed: int | None = None,
                        **overrides: Any):
    """``(lm, tokenizer)`` for ``source`` (hub id, folder, ``tiny:gemma3``, ``offline:gemma3-270m``...).

    ``quantize_4bit``: NF4 with double quantisation through bitsandbytes (compute in bf16 on CUDA,
    float32 on CPU), then peft's ``prepare_model_for_kbit_training``. ``tiny:`` models are random and
    cannot be quantised at load (a ConfigError says so). Every LM weight is frozen. For an
    image-text checkpoint such as ``google/medgemma-1.5-4b-it`` the causal-LM class loads its language
    model.
    """
    from .hub import load_model, load_tokenizer, parse_source

    src = parse_source(source)
    qconf = None
    if quantize_4bit:
        if src.scheme == "tiny":
            raise ConfigError(f"language model {source!r}: 4-bit quantisation needs pretrained weights "
                              "(a hub id, folder or offline: source), not a tiny: random model")
        from transformers import BitsAndBytesConfig

        qconf = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available()
                                   else torch.float32)
    lm = load_model(source, kind="causal_lm", cache_dir=cache_dir, seed=seed, quantization_config=qconf,
                    **({} if src.scheme == "tiny" else {"dtype": torch.float32} if not torch.cuda.is_available()
                       else {}), **overrides)
    if quantize_4bit:
        from peft import prepare_model_for_kbit_training

        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
    for p in lm.parameters():
        p.requires_grad_(False)
    tok = load_tokenizer(source, cache_dir=cache_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return lm, tok


class ReportVLM(nn.Module):
    """Vision tower + compressor + projector (+ ``vis_scale``) + causal LM (see the module docstring).

    ``compressor``: ``"perceiver"`` (card, default) or ``"pool"`` (released code); ``num_tokens`` visual
    tokens (32); ``max_report_tokens``: a longer report is a DataError rather than a silent cut.
    """

    def __init__(self, vision: nn.Module, lm: nn.Module, tokenizer: Any, *, compressor: str = "perceiver",
                 num_tokens: int = 32, compressor_depth: int = 2, compressor_heads: int = 4,
                 prompt: str = CANONICAL_PROMPT, max_report_tokens: int = 256):
        super().__init__()
        d_v = getattr(vision, "hidden_size", None)
        if not isinstance(d_v, int):
            raise ConfigError(f"vision tower {type(vision).__name__}: expected a 'hidden_size' attribute (int)")
        d_lm = int(lm.get_input_embeddings().weight.shape[1])
        self.vision = vision
        self.compressor = make_compressor(compressor, d_v, num_tokens, depth=compressor_depth, heads=compressor_heads)
        self.projector = nn.Sequential(nn.Linear(d_v, d_lm), nn.GELU(), nn.Linear(d_lm, d_lm))
        self.vis_scale = nn.Parameter(torch.tensor(1.0))
        self.lm = lm
        self.tokenizer = tokenizer
        self.num_tokens, self.d_lm, self.max_report_tokens = int(num_tokens), d_lm, int(max_report_tokens)
        self.prompt = prompt
        if tokenizer.eos_token_id is None:
            raise ConfigError("tokenizer: expected an eos token (the report ends with it)")
        self.set_stage("frozen")

    # -- configuration ------------------------------------------------------------------------
    @property
    def has_lora(self) -> bool:
        return any("lora_" in n for n, _ in self.lm.named_parameters())

    def add_lora(self, rank: int = 4, alpha: int | None = None, dropout: float = 0.05) -> None:
        """Wrap the LM with peft LoRA adapters on q/k/v/o (once)."""
        from peft import get_peft_model

        if self.has_lora:
            raise ConfigError("add_lora: the language model already has LoRA adapters")
        self.lm = get_peft_model(self.lm, lora_config(rank, alpha, dropout))

    def set_stage(self, stage: str) -> list[str]:
        """Freeze everything, then make the stage's parts trainable; returns the trainable names."""
        if stage not in STAGES:
            raise ConfigError(f"stage: expected one of {', '.join(STAGES)}, found {stage!r}")
        if stage == "phase2b" and not self.has_lora:
            raise ConfigError("stage 'phase2b' trains LoRA adapters: call add_lora(rank) first")
        for p in self.parameters():
            p.requires_grad_(False)
        parts: list[nn.Module | nn.Parameter] = []
        if stage == "phase1":
            parts = [self.vision, self.compressor, self.projector]
        elif stage in ("phase2a", "phase2b"):
            parts = [self.projector]
        if stage != "frozen":
            self.vis_scale.requires_grad_(True)
        for m in parts:
            for p in m.parameters():
                p.requires_grad_(True)
        if stage == "phase2b":
            for n, p in self.lm.named_parameters():
                if "lora_" in n:
                    p.requires_grad_(True)
        self.stage = stage
        return [n for n, p in self.named_parameters() if p.requires_grad]

    # -- stage checkpoints ---------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {"vision": type(self.vision).__name__, "d_vision": int(self.vision.hidden_size), "d_lm": self.d_lm,
                "num_tokens": self.num_tokens, "compressor": type(self.compressor).__name__,
                "vocab_size": int(self._embed.weight.shape[0]), "lora": self.has_lora}

    def stage_tensors(self) -> dict[str, torch.Tensor]:
        """Everything a training stage can change: the tower, compressor, projector, ``vis_scale`` and the LoRA
        adapters (the frozen LM base is not included), plus the persistent buffers of the vision side."""
        keep = ("vision.", "compressor.", "projector.", "vis_scale")
        sd = self.state_dict()
        return {k: v.detach().to("cpu").clone().contiguous() for k, v in sd.items()
                if k.startswith(keep) or "lora_" in k}

    def save_stage(self, path: Any, **metadata: Any) -> Any:
        """Write :meth:`stage_tensors` to ``path`` (safetensors, atomically) with this model's configuration,
        so :meth:`load_stage` can refuse a checkpoint of another configuration. Returns the path."""
        import json

        from .cache import atomic_save_tensors

        meta = {"format": "pt", "brainkit_vlm": json.dumps(self._config()), "brainkit_meta": json.dumps(metadata)}
        return atomic_save_tensors(self.stage_tensors(), path, meta)

    def load_stage(self, path: Any) -> dict[str, Any]:
        """Load a checkpoint written by :meth:`save_stage`; returns its metadata.

        A missing or unreadable file, a checkpoint of another configuration (visual tokens, compressor, vision
        width, LM width or vocabulary, with or without LoRA) or with other tensor names / shapes raises
        :class:`~brainkit.errors.CheckpointError` naming the file and the difference.
        """
        import json
        from pathlib import Path

        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: stage checkpoint not found")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            saved = json.loads(meta["brainkit_vlm"])
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: not a ReportVLM stage checkpoint ({exc})") from exc
        own_cfg = self._config()
        diff = [f"{k}: checkpoint {saved.get(k)!r} vs model {v!r}" for k, v in own_cfg.items() if saved.get(k) != v]
        if diff:
            raise CheckpointError(f"{path}: the checkpoint was written by another ReportVLM configuration: "
                                  + "; ".join(diff))
        own = self.stage_tensors()
        bad = sorted(set(own) ^ set(tensors)) + [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
        if bad:
            raise CheckpointError(f"{path}: the checkpoint's tensors do not match this model ({len(bad)} differ, "
                                  f"e.g. {', '.join(bad[:3])})")
        sd = self.state_dict()
        with torch.no_grad():
            for k, v in tensors.items():
                sd[k].copy_(v.to(sd[k].device, sd[k].dtype))
        return json.loads(meta.get("brainkit_meta", "{}"))

    # -- embeddings ---------------------------------------------------------------------------
    @property
    def _embed(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def visual_tokens(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, K, d_lm)`` visual tokens: ``vis_scale * projector(compressor(tower(volume)))``."""
        volume = check_volume(volume)
        tokens = self.vision(volume)
        z = self.projector(self.compressor(tokens))
        return (self.vis_scale * z).to(self._embed.weight.dtype)

    def _prompt_ids(self, prompt: str | None) -> tuple[list[int], list[int]]:
        """(bos ids, prompt ids) of the prompt, the bos split off so the visual tokens follow it."""
        ids = self.tokenizer(self.prompt if prompt is None else prompt, add_special_tokens=True)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if bos is not None and ids and ids[0] == bos:
            return [bos], ids[1:]
        return [], ids

    def report_ids(self, reports: Sequence[str]) -> list[list[int]]:
        """Token ids of each report followed by the eos token; an empty or too long report is a DataError."""
        if isinstance(reports, str):
            raise DataError(None, "reports", "a sequence of report strings", "one string")
        out = []
        for i, text in enumerate(reports):
            if not isinstance(text, str) or not text.strip():
                raise DataError(None, f"reports[{i}]", "a non-empty report", repr(text))
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) + 1 > self.max_report_tokens:
                raise DataError(None, f"reports[{i}]", f"at most {self.max_report_tokens - 1} tokens "
                                "(max_report_tokens minus the eos)", f"{len(ids)} tokens")
            out.append(ids + [self.tokenizer.eos_token_id])
        return out

    def build_inputs(self, volume: torch.Tensor, reports: Sequence[str] | None = None, prompt: str | None = None
                     ) -> dict[str, torch.Tensor]:
        """``inputs_embeds``, ``attention_mask`` and (with reports) ``labels``: -100 on the bos,
        visual, prompt and padding positions, the report tokens and eos elsewhere (right padding)."""
        vis = self.visual_tokens(volume)
        b = vis.shape[0]
        bos, pids = self._prompt_ids(prompt)
        dev = vis.device
        head_ids = torch.tensor(bos, dtype=torch.long, device=dev)
        prompt_ids = torch.tensor(pids, dtype=torch.long, device=dev)
        head = self._embed(head_ids)[None].expand(b, -1, -1)
        tail = self._embed(prompt_ids)[None].expand(b, -1, -1)
        parts = [head, vis, tail]
        n_ctx = len(bos) + vis.shape[1] + len(pids)
        if reports is None:
            emb = torch.cat(parts, 1)
            return {"inputs_embeds": emb, "attention_mask": torch.ones(emb.shape[:2], dtype=torch.long, device=dev)}
        rids = self.report_ids(reports)
        if len(rids) != b:
            raise DataError(None, "reports", f"{b} reports (one per volume)", len(rids))
        longest = max(len(r) for r in rids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.full((b, longest), pad, dtype=torch.long, device=dev)
        mask = torch.zeros((b, n_ctx + longest), dtype=torch.long, device=dev)
        labels = torch.full((b, n_ctx + longest), -100, dtype=torch.long, device=dev)
        for i, r in enumerate(rids):
            ids[i, :len(r)] = torch.tensor(r, device=dev)
            mask[i, :n_ctx + len(r)] = 1
            labels[i, n_ctx:n_ctx + len(r)] = torch.tensor(r, device=dev)
        emb = torch.cat(parts + [self._embed(ids)], 1)
        return {"inputs_embeds": emb, "attention_mask": mask, "labels": labels}

    def forward(self, volume: torch.Tensor, reports: Sequence[str], prompt: str | None = None):
        """The LM output with ``loss`` = next-token cross-entropy on the report tokens only."""
        return self.lm(**self.build_inputs(volume, reports, prompt))

    def loss(self, volume: torch.Tensor, reports: Sequence[str]) -> torch.Tensor:
        """Phase 2A / 2B loss: next-token CE on the report tokens."""
        return self(volume, reports).loss

    @torch.no_grad()
    def report_nll(self, volume: torch.Tensor, reports: Sequence[str]) -> torch.Tensor:
        """Per-sample mean negative log-likelihood of each report given its volume, ``(B,)``
        (the score of 3D LIME in ``06_braingemma3d_evaluation``)."""
        inputs = self.build_inputs(volume, reports)
        labels = inputs.pop("labels")
        logits = self.lm(**inputs).logits[:, :-1].float()
        tgt = labels[:, 1:]
        nll = nnf.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=-100, reduction="none")
        keep = (tgt != -100).float()
        return (nll * keep).sum(1) / keep.sum(1).clamp(min=1)

    # -- Phase 1: contrastive grounding -------------------------------------------------------
    def image_embedding(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, d_lm)``: the mean of the visual tokens."""
        return self.visual_tokens(volume).float().mean(1)

    def text_embedding(self, reports: Sequence[str]) -> torch.Tensor:
        """``(B, d_lm)``: mean-pooled last hidden states of the (frozen) LM over the report tokens."""
        rids = self.report_ids(reports)
        dev = self._embed.weight.device
        longest = max(len(r) for r in rids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.full((len(rids), longest), pad, dtype=torch.long, device=dev)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rids):
            ids[i, :len(r)] = torch.tensor(r, device=dev)
            mask[i, :len(r)] = 1
        with torch.set_grad_enabled(any(p.requires_grad for p in self.lm.parameters())):
            out = self.lm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        h = out.hidden_states[-1].float()
        m = mask[..., None].float()
        return (h * m).sum(1) / m.sum(1)

    def contrastive_loss(self, volume: torch.Tensor, reports: Sequence[str], scale: torch.Tensor | float
                         ) -> torch.Tensor:
        """Phase 1: symmetric InfoNCE between image and report embeddings (cosine, times ``scale = 1/tau``).
        A batch of one is refused (the loss would be identically zero)."""
        if volume.shape[0] < 2:
            raise ConfigError(f"Phase 1 InfoNCE: expected a batch of at least 2 volume-report pairs, found "
                              f"{volume.shape[0]} (the released default of 1 makes the loss identically zero)")
        img = nnf.normalize(self.image_embedding(volume), dim=-1)
        txt = nnf.normalize(self.text_embedding(reports), dim=-1)
        return info_nce(img @ txt.T, scale)

    # -- scale and generation -----------------------------------------------------------------
    @torch.no_grad()
    def calibrate_vis_scale(self, volume: torch.Tensor) -> float:
        """Set ``vis_scale`` so that the visual tokens' RMS equals the prompt embeddings' RMS; returns it."""
        self.vis_scale.fill_(1.0)
        vis = self.visual_tokens(volume).float()
        _, pids = self._prompt_ids(None)
        txt = self._embed(torch.tensor(pids, device=vis.device)).float()
        value = float(txt.pow(2).mean().sqrt() / vis.pow(2).mean().sqrt().clamp(min=1e-8))
        self.vis_scale.fill_(value)
        return value

    @torch.no_grad()
    def generate_report(self, volume: torch.Tensor, prompt: str | None = None, **overrides: Any) -> list[str]:
        """Reports for a batch of volumes with the card's settings (:data:`GENERATION`; override any)."""
        inputs = self.build_inputs(volume, None, prompt)
        settings = {**GENERATION, **overrides}
        if not settings.get("do_sample", False):
            for k in ("temperature", "top_p"):
                settings.pop(k, None)
        tok = self.tokenizer
        out = self.lm.generate(**inputs, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                               else tok.eos_token_id, eos_token_id=tok.eos_token_id, **settings)
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]


@contextlib.contextmanager
def visual_tokens_zeroed(model: ReportVLM):
    """Within the block, ``model``'s visual tokens are zeros of their usual shape: the same LM, prompt and
    positions, but nothing from the image. The baseline of ``06_braingemma3d_evaluation`` that shows how much a
    report owes to the volume."""
    original = model.visual_tokens

    def zeros(volume: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(original(volume))

    model.visual_tokens = zeros  # an instance attribute, over the method
    try:
        yield model
    finally:
        del model.visual_tokens


# -- token compressors: many vision tokens in, a fixed small number out -------------------------------
#
# Token compressors: many vision tokens in, a fixed small number out.
#
# Introduced in ``04_inflating_encoders`` (token counts per input size) and used by the report generator of
# ``05_braingemma3d_training`` (BrainGemma3D). A 3D tower yields hundreds or thousands of
# tokens; the language model gets 32.
#
# - :class:`PerceiverResampler` (the model card, default): ``L`` learned latent vectors cross-attend
#   to the tokens, then pass a feed-forward block, ``depth`` times (Flamingo's resampler: keys and
#   values are the tokens concatenated with the latents). No position information is added, so the
#   output does not depend on the order of the input tokens.
# - :class:`AdaptivePoolCompressor` (the released code): adaptive average pooling over the token
#   axis to ``L`` tokens, in the tokens' order; no parameters.
#
# Both take ``(B, N, dim)`` and return ``(B, L, dim)``.

COMPRESSORS = ("perceiver", "pool")


def _check_tokens(tokens: torch.Tensor, dim: int | None) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        raise DataError(None, "tokens", "a (B, N, dim) tensor",
                        tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__)
    if tokens.shape[1] < 1:
        raise DataError(None, "tokens", "at least one token", tuple(tokens.shape))
    if dim is not None and tokens.shape[2] != dim:
        raise DataError(None, "tokens", f"feature size {dim}", tokens.shape[2])


class _PerceiverLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ff_mult: int):
        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None):
        q = self.norm_latents(latents)
        kv = torch.cat([self.norm_tokens(tokens), q], 1)
        mask = None
        if key_padding_mask is not None:
            pad_lat = torch.zeros(latents.shape[:2], dtype=torch.bool, device=latents.device)
            mask = torch.cat([key_padding_mask.bool(), pad_lat], 1)
        out, _ = self.attn(q, kv, kv, key_padding_mask=mask, need_weights=False)
        latents = latents + out
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """``num_latents`` learned queries that cross-attend to the tokens (``depth`` layers, default 2
    with 32 latents, as the card). ``forward(tokens (B, N, dim), key_padding_mask=None) -> (B, L, dim)``;
    ``key_padding_mask`` is True where a token is padding."""

    def __init__(self, dim: int, num_latents: int = 32, depth: int = 2, heads: int = 4, ff_mult: int = 2):
        super().__init__()
        if num_latents < 1 or depth < 1:
            raise ConfigError(f"PerceiverResampler: expected num_latents >= 1 and depth >= 1, found "
                              f"{num_latents}, {depth}")
        if dim % heads:
            raise ConfigError(f"PerceiverResampler: dim {dim} is not divisible by heads {heads}")
        self.dim, self.num_latents = int(dim), int(num_latents)
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * dim ** -0.5)
        self.layers = nn.ModuleList(_PerceiverLayer(dim, heads, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_tokens(tokens, self.dim)
        x = self.latents.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, tokens, key_padding_mask)
        return self.norm(x)


class AdaptivePoolCompressor(nn.Module):
    """The released code's compressor: ``adaptive_avg_pool1d`` over the token axis to ``num_tokens``.
    Token ``j`` of the output is the mean of a contiguous run of about ``N / num_tokens`` inputs."""

    def __init__(self, num_tokens: int = 32):
        super().__init__()
        if num_tokens < 1:
            raise ConfigError(f"AdaptivePoolCompressor: expected num_tokens >= 1, found {num_tokens}")
        self.num_latents = int(num_tokens)

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_tokens(tokens, None)
        if key_padding_mask is not None:
            raise ConfigError("AdaptivePoolCompressor does not take a key_padding_mask (it pools in order)")
        return nnf.adaptive_avg_pool1d(tokens.transpose(1, 2), self.num_latents).transpose(1, 2)


def make_compressor(kind: str, dim: int, num_tokens: int = 32, depth: int = 2, heads: int = 4) -> nn.Module:
    """``"perceiver"`` -> :class:`PerceiverResampler`, ``"pool"`` -> :class:`AdaptivePoolCompressor`."""
    if kind == "perceiver":
        return PerceiverResampler(dim, num_latents=num_tokens, depth=depth, heads=heads)
    if kind == "pool":
        return AdaptivePoolCompressor(num_tokens)
    raise ConfigError(f"compressor: expected one of {', '.join(COMPRESSORS)}, found {kind!r}")
