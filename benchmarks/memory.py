"""Benchmark: GPU memory of the colab / full configurations, estimated from the real model dimensions.

    python benchmarks/memory.py            # prints a markdown table (the README's memory table)

No weights are downloaded and nothing runs on a GPU: every network is built on PyTorch's ``meta`` device
from a configuration with the published dimensions of its checkpoint, and a forward (and, for training,
a backward) pass is traced with a dispatch mode that counts the bytes of every tensor an operation creates
and releases it when Python frees it. That gives the peak of live activation memory the way the eager
allocator would see it (without fragmentation or the CUDA context, which the table adds as a fixed
allowance). Parameters are counted in the precision they are stored in: 4-bit NF4 with double quantisation
(bitsandbytes: 4 bits plus about 0.127 bits of quantisation constants per weight) for quantised language
models, bf16 otherwise; trainable parameters add a gradient and two Adam moments in fp32.

Dimensions (from the public model configurations; the checkpoints are not needed):
- MedSigLIP-448 vision tower (SigLIP so400m/14): hidden 1152, MLP 4304, 27 layers, 16 heads;
  MedGemma-1.5-4B language model (Gemma 3 4B): hidden 2560, MLP 10240, 34 layers, 8 heads (4 KV), head dim 256,
  vocabulary 262,208.
- Llama-3.1-8B decoder layer: hidden 4096, MLP 14336, 32 heads (8 KV); MedVisionLlama's ViT: MONAI ViT-B
  (hidden 768, MLP 3072, 12 layers, 12 heads), 128^3 volume, 8^3 patches.
- brat: MONAI DenseNet121 (3D), a BERT-base Q-Former (12 layers, cross-attention every 2nd) with 32
  queries, a BERT-base text encoder at 256 tokens, input 32x256x256.
"""

from __future__ import annotations

import argparse
import sys
import weakref
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GB = 1024**3
CUDA_CONTEXT_GB = 0.8  # CUDA context + cuBLAS workspace, a fixed allowance
NF4_BYTES_PER_WEIGHT = (4 + 0.127) / 8
T4_GB, A100_GB = 15.0, 80.0  # usable memory of a 16 GB T4 (nvidia-smi shows ~15 GiB), an 80 GB A100


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of every non-aliasing tensor an op creates, and frees them with the tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):  # views and in-place ops
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                n = t.numel() * t.element_size()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out


class _MemoryEfficientAttention(torch.autograd.Function):
    """Stands in for a fused attention kernel (flash / memory-efficient SDPA, as a GPU runs it): the
    output and a log-sum-exp per query are allocated, the L x L score matrix never is."""

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.save_for_backward(q, k, v)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.lse = lse
        return q.new_empty(*q.shape[:-1], v.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        q, k, v = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fused_sdpa(query=None, key=None, value=None, *args, enable_gqa=False, **kwargs):
    q, k, v = query, key, value
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    return _MemoryEfficientAttention.apply(q, k, v)


FUSED_ATTENTION = True  # --math-attention turns it off


def peak_activation_bytes(fn, *, train: bool, fused_attention: bool | None = None) -> int:
    """Peak live bytes while ``fn()`` runs (forward), plus its backward when ``train``.

    ``fused_attention``: attention through a fused kernel (O(L) memory, as on a GPU) instead of the
    math path that materialises every L x L score matrix (what CPU and eager attention do)."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if FUSED_ATTENTION if fused_attention is None else fused_attention:
        torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
    try:
        return _peak(fn, train)
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa


def _peak(fn, train: bool) -> int:
    with (nullcontext() if train else torch.no_grad()), LiveBytes() as counter:
        out = fn()
        if train:
            out.float().sum().backward()
        del out
    return counter.peak


def n_params(module: nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def linear_weights(module: nn.Module) -> int:
    """Weights of the nn.Linear layers (what bitsandbytes quantises), biases excluded."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def adam_bytes(n_trainable: int) -> int:
    """fp32 weight copy is counted with the parameters; gradient + two moments here."""
    return 3 * 4 * n_trainable


# -- BrainGemma3D ---------------------------------------------------------------------------------
def braingemma3d(volume=(64, 128, 128), depth_patch=2, visual_tokens=32, prompt_tokens=48,
                 report_tokens=256, lora_rank=4) -> list[dict]:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, SiglipVisionConfig, SiglipVisionModel

    vcfg = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                              num_attention_heads=16, image_size=448, patch_size=14)
    lcfg = Gemma3TextConfig(vocab_size=262208, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                            num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                            sliding_window=1024)
    vcfg._attn_implementation = lcfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        vision = SiglipVisionModel(vcfg).to(torch.bfloat16)
        lm = Gemma3ForCausalLM(lcfg).to(torch.bfloat16)
    d, h, w = volume
    tokens = (d // depth_patch) * (h // 14) * (w // 14)
    seq = visual_tokens + prompt_tokens + report_tokens
    # LoRA on q/k/v/o of every layer: r * (d_in + d_out) per projection
    attn = lm.model.layers[0].self_attn
    lora = lora_rank * sum(m.in_features + m.out_features for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
    lora *= lcfg.num_hidden_layers
    # trainable, fp32: projector Linear(1152->2560) -> GELU -> Linear(2560->2560) + vis_scale; a 2-layer
    # Perceiver over 1152-d tokens (cross-attention 4 d^2 + MLP 8 d^2 per layer) with 32 latents
    projector = 1152 * 2560 + 2560 * 2560 + 2 * 2560 + 1
    perceiver = 2 * (4 * 1152 * 1152 + 2 * 1152 * 4 * 1152) + 32 * 1152

    lm_lin = linear_weights(lm.model)
    lm_bytes = lm_lin * NF4_BYTES_PER_WEIGHT + (n_params(lm.model) - lm_lin) * 2  # embeddings/norms in bf16
    vis_bytes = n_params(vision) * 2
    small_trainable = projector + perceiver

    def vision_fwd():
        emb = torch.zeros(1, tokens, 1152, dtype=torch.bfloat16, device="meta")
        return vision.encoder(inputs_embeds=emb).last_hidden_state

    def lm_fwd(train):
        x = torch.zeros(1, seq, 2560, dtype=torch.bfloat16, device="meta", requires_grad=train)
        return lm(inputs_embeds=x, logits_to_keep=report_tokens).logits

    for p in lm.parameters():
        p.requires_grad_(False)
    act_vis_inf = peak_activation_bytes(vision_fwd, train=False)
    act_lm_inf = peak_activation_bytes(lambda: lm_fwd(False), train=False)
    act_lm_train = peak_activation_bytes(lambda: lm_fwd(True), train=True)
    for p in vision.parameters():
        p.requires_grad_(True)
    act_vis_train = peak_activation_bytes(vision_fwd, train=True)

    base = lm_bytes + vis_bytes + small_trainable * 4
    rows = [
        dict(model="BrainGemma3D", config=f"inference, {volume}, {tokens} vision tokens, 4-bit LM",
             params_gb=base / GB, act_gb=max(act_vis_inf, act_lm_inf) / GB, optim_gb=0.0),
        dict(model="BrainGemma3D", config=f"Phase 2B (projector + LoRA r={lora_rank}), batch 1, {seq} tokens",
             params_gb=(base + lora * 4) / GB, act_gb=(act_lm_train + act_vis_inf) / GB,
             optim_gb=adam_bytes(small_trainable + lora) / GB),
        dict(model="BrainGemma3D", config="Phase 1 (vision tower + compressor + projector trained), batch 2",
             params_gb=(base + vis_bytes) / GB, act_gb=2 * act_vis_train / GB + act_lm_inf / GB,
             optim_gb=adam_bytes(n_params(vision) + small_trainable) / GB),
    ]
    return rows


# -- MedVisionLlama -------------------------------------------------------------------------------
def medvisionllama(image=128, patch=8, batch=4) -> list[dict]:
    from monai.networks.blocks import PatchEmbeddingBlock, TransformerBlock
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      num_hidden_layers=32, rope_theta=500000.0)
    cfg._attn_implementation = "sdpa"
    n_tok = (image // patch) ** 3
    with torch.device("meta"):
        embed = PatchEmbeddingBlock(1, (image,) * 3, (patch,) * 3, 768, 12, proj_type="conv", pos_embed_type="learnable")
        enc = nn.ModuleList([TransformerBlock(768, 3072, 12, use_flash_attention=True) for _ in range(12)])
        dec = nn.ModuleList([TransformerBlock(768, 3072, 12, use_flash_attention=True) for _ in range(2)])
        up, down = nn.Linear(768, 4096), nn.Linear(4096, 768)
        llm = LlamaDecoderLayer(cfg, layer_idx=31).to(torch.bfloat16)
        rope = LlamaRotaryEmbedding(cfg)
        head = nn.Linear(768, patch**3)
    for p in llm.parameters():
        p.requires_grad_(False)
    trainable = sum(n_params(m) for m in (embed, enc, dec, up, down, head))

    def fwd():
        x = torch.zeros(batch, 1, image, image, image, device="meta")
        t = embed(x)
        for b in enc:
            t = b(t)
        z = up(t).to(torch.bfloat16)
        pos = torch.arange(n_tok, device="meta")[None].expand(batch, -1)
        z = z + llm(z, position_embeddings=rope(z, pos))
        t = t + down(z.float())
        for b in dec:
            t = b(t)
        return head(t)

    act = peak_activation_bytes(fwd, train=True)
    return [dict(model="MedVisionLlama", config=f"training, {image}^3, patch {patch}^3 ({n_tok} tokens), batch {batch}, "
                 "Llama-3.1-8B layer (bf16, frozen), fp32 ViT-B",
                 params_gb=(trainable * 4 + n_params(llm) * 2) / GB, act_gb=act / GB, optim_gb=adam_bytes(trainable) / GB)]


# -- brat -----------------------------------------------------------------------------------------
def brat(volume=(32, 256, 256), n_queries=32, text_tokens=256) -> tuple[list[dict], dict]:
    from monai.networks.nets import DenseNet121
    from transformers import BertConfig, BertModel, Blip2QFormerConfig, Blip2QFormerModel

    qcfg = Blip2QFormerConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                              encoder_hidden_size=1024, cross_attention_frequency=2)
    tcfg = BertConfig()
    qcfg._attn_implementation = tcfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        cnn = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).features.to(torch.bfloat16)
        qformer = Blip2QFormerModel(qcfg).to(torch.bfloat16)
        text = BertModel(tcfg).to(torch.bfloat16)
        queries = torch.zeros(1, n_queries, 768, dtype=torch.bfloat16)

    def fwd(b):
        def run():
            x = torch.zeros(b, 1, *volume, dtype=torch.bfloat16, device="meta")
            f = cnn(x).flatten(2).transpose(1, 2)
            q = qformer(query_embeds=queries.expand(b, -1, -1), encoder_hidden_states=f).last_hidden_state
            ids = torch.zeros(b, text_tokens, dtype=torch.long, device="meta")
            return q.mean() + text(input_ids=ids).last_hidden_state.mean()
        return run

    trainable = n_params(cnn) + n_params(qformer) + n_params(text) + n_queries * 768
    per1, per2 = peak_activation_bytes(fwd(1), train=True), peak_activation_bytes(fwd(2), train=True)
    per_sample, fixed = per2 - per1, 2 * per1 - per2
    weights = trainable * 2 + trainable * 4  # bf16 weights + fp32 master copy (mixed precision)
    static = weights + adam_bytes(trainable) + CUDA_CONTEXT_GB * GB + max(fixed, 0)

    def max_batch(cap_gb):
        return max(0, int((cap_gb * GB - static) // per_sample))

    rows = [dict(model="brat", config=f"training, {volume}, batch 32 (paper: 25-32), bf16 mixed precision",
                 params_gb=weights / GB, act_gb=(max(fixed, 0) + 32 * per_sample) / GB,
                 optim_gb=adam_bytes(trainable) / GB)]
    return rows, {"per_sample_gb": per_sample / GB, "t4_batch": max_batch(T4_GB), "a100_batch": max_batch(A100_GB)}


def main(argv: list[str] | None = None) -> int:
    global FUSED_ATTENTION
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--math-attention", action="store_true",
                    help="materialise the L x L attention scores (eager / CPU attention) instead of a fused GPU kernel")
    FUSED_ATTENTION = not ap.parse_args(argv).math_attention
    rows = braingemma3d() + medvisionllama()
    brat_rows, brat_fit = brat()
    rows += brat_rows
    attn = "fused (flash / memory-efficient) attention" if FUSED_ATTENTION else "math attention (L x L scores stored)"
    print(f"Estimated GPU memory (GiB; + {CUDA_CONTEXT_GB} GiB CUDA context), {attn}; fits: T4 = {T4_GB:g} GiB "
          f"usable, A100 = {A100_GB:g} GiB\n")
    print("| model | configuration | parameters | activations (peak) | grads + Adam | total | T4 16 GB | A100 80 GB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        total = r["params_gb"] + r["act_gb"] + r["optim_gb"] + CUDA_CONTEXT_GB
        t4, a100 = ("yes" if total <= cap else "no" for cap in (T4_GB, A100_GB))
        print(f"| {r['model']} | {r['config']} | {r['params_gb']:.2f} | {r['act_gb']:.2f} | {r['optim_gb']:.2f} | "
              f"{total:.2f} | {t4} | {a100} |")
    print(f"\nbrat: {brat_fit['per_sample_gb']:.2f} GiB of activations per sample at 32x256x256 -> the largest batch "
          f"that fits is {brat_fit['t4_batch']} on a T4 and {brat_fit['a100_batch']} on an A100 80 GB "
          "(no gradient checkpointing).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
