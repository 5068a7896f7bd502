"""brat model (notebooks 08-09): tokenisation into sentences, the Q-Former initialised from a BERT,
the loss and its parts, the Table 2 ablations as configurations, and bad input."""

import logging

import pytest
import torch

from brainkit import losses as L
from brainkit.errors import ConfigError, DataError
from brainkit.models import brat as B
from brainkit.models.factory import load_model, load_tokenizer

GRID = (32, 32, 16)


@pytest.fixture(scope="module")
def bert():
    return load_model("tiny:bert", kind="bert", seed=0)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny:bert")


def _cfg(**kw):
    base = dict(input_size=GRID, backbone="densenet-tiny", feature_stage="denseblock2", num_queries=4,
                embed_dim=16, max_text_tokens=96, itg_max_tokens=24, diversity_weight=0.1, dpp_eps=1e-2,
                dpp_normalize=True)
    base.update(kw)
    return B.BratConfig(**base)


REPORTS = ["A mass in the left frontal lobe. It enhances. No midline shift.",
           "Normal study. No mass.",
           "Right temporal lesion with oedema. Mild mass effect.",
           "Two small lesions. Both enhance in a ring. No hydrocephalus. Normal flow voids."]


def _batch(tok, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = B.tokenize_reports(tok, [REPORTS[i % len(REPORTS)] for i in range(n)], max_tokens=96)
    b["image"] = torch.randn(n, 1, *GRID, generator=g)
    return b


# ------------------------------------------------------------------------------------ tokenisation
def test_tokenize_tags_each_token_with_its_sentence(tok):
    b = B.tokenize_reports(tok, REPORTS[:2], max_tokens=200)
    ts, sm = b["token_sentence"], b["sentence_mask"]
    assert sm.shape == (2, 3)
    assert sm[0].tolist() == [True, True, True] and sm[1].tolist() == [True, True, False]
    # first and last real tokens are the special ones; sentence ids are non-decreasing in between
    n0 = int(b["attention_mask"][0].sum())
    assert ts[0, 0] == -1 and ts[0, n0 - 1] == -1
    inner = ts[0, 1:n0 - 1]
    assert (inner[1:] >= inner[:-1]).all() and set(inner.tolist()) == {0, 1, 2}
    # "No midline shift." is the third sentence: its bytes come last
    assert len([t for t in ts[0].tolist() if t == 2]) == len("No midline shift.".encode())


def test_tokenize_truncation_drops_cut_sentences_and_caps_sentences(tok, caplog):
    b = B.tokenize_reports(tok, [REPORTS[0]], max_tokens=12)
    assert b["input_ids"].shape[1] == 12 and b["sentence_mask"].tolist() == [[True]]
    long = " ".join(f"Sentence {i}." for i in range(25))
    with caplog.at_level(logging.WARNING):
        b = B.tokenize_reports(tok, [long], max_tokens=400, max_sentences=20)
    assert b["sentence_mask"].shape == (1, 20)
    assert "keeping the first 20" in caplog.text


def test_report_without_sentences_is_a_clear_error(tok):
    with pytest.raises(DataError, match="case_7.*at least one sentence"):
        B.tokenize_reports(tok, ["Fine.", "   "], ids=["case_6", "case_7"])
    with pytest.raises(DataError, match="a string"):
        B.tokenize_reports(tok, [None])


def test_finding_labels_from_structure_and_from_text():
    f = {"normal": False, "lesions": [{}], "hemisphere": "left", "lobes": ["frontal"], "lesion_type": "glioma",
         "enhancement": True, "oedema": False, "necrosis": False, "mass_effect": False, "midline_shift_mm": 0.0}
    lab = B.finding_labels(f)
    assert {"laterality:left", "anatomy:frontal", "pathology:glioma", "pathology:enhancement"} <= lab
    assert B.finding_labels({"normal": True}) == frozenset()
    assert "laterality:right" in B.finding_labels(report="A mass in the right frontal lobe.")
    assert B.finding_labels(report="Normal study.") == frozenset()


# ------------------------------------------------------------------------------------------ model
def test_qformer_starts_from_the_bert(bert):
    m = B.BratModel(_cfg(), bert=bert)
    q, t = m.qformer.encoder.layer[1], bert.encoder.layer[1]
    assert torch.equal(q.attention.attention.query.weight, t.attention.self.query.weight)
    assert torch.equal(q.intermediate_query.dense.weight, t.intermediate.dense.weight)
    assert torch.equal(q.output.dense.weight, t.output.dense.weight)
    assert m.qformer.encoder.layer[0].has_cross_attention and not q.has_cross_attention
    assert m.qformer_init["random"] > 0  # the cross-attention layers
    assert m.qformer.config._attn_implementation == "eager"


def test_loss_runs_learns_signal_and_counts_steps(bert, tok):
    torch.manual_seed(0)
    m = B.BratModel(_cfg(diversity_warmup_steps=4), bert=bert).train()
    m.set_itg_vocab(torch.arange(260))
    b = _batch(tok)
    loss, logs = m.loss(b)
    assert torch.isfinite(loss) and {"nce", "dpp", "itg", "attn_cos", "tau"} <= set(logs)
    loss.backward()
    assert m.backbone.features.conv0.weight.grad.abs().sum() > 0
    assert m.query_tokens.grad.abs().sum() > 0
    assert m.qformer.encoder.layer[0].crossattention.attention.key.weight.grad.abs().sum() > 0
    assert int(m.steps_seen) == 1 and m.diversity_weight() == pytest.approx(0.1 / 4)
    # a few steps on one batch lower the contrastive and generation losses (no dropout, no DPP ramp)
    m = B.BratModel(_cfg(diversity="none", dropout=0.0), bert=bert).train()
    m.set_itg_vocab(torch.arange(260))
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    hist = []
    for _ in range(8):
        opt.zero_grad()
        loss, logs = m.loss(b)
        loss.backward()
        opt.step()
        hist.append(logs["nce"] + logs["itg"])
    assert hist[-1] < hist[0]


def test_itg_pass_leaves_the_query_outputs_unchanged(bert, tok):
    """Queries never attend to the text, so the ITG pass yields the multi-view embeddings exactly."""
    m = B.BratModel(_cfg(), bert=bert).eval()
    b = _batch(tok)
    with torch.no_grad():
        alone = m.encode_image(b["image"])
        both, attn = m._qformer(m.image_tokens(b["image"]), b["input_ids"][:, :20], b["attention_mask"][:, :20])
    assert torch.allclose(alone["query_states"], both[:, :4], atol=1e-5)
    assert torch.allclose(alone["attention"], attn, atol=1e-6)
    A = alone["attention"]
    assert A.shape == (4, 4, 32) and torch.allclose(A.sum(-1), torch.ones(4, 4), atol=1e-5)


def test_sentence_embedding_is_the_mean_of_its_tokens(bert, tok):
    m = B.BratModel(_cfg(), bert=bert).eval()
    b = _batch(tok, n=2)
    states = torch.randn(2, b["input_ids"].shape[1], m.hidden_size)
    pooled, mask = m.pool_sentences(states, b["token_sentence"], b["sentence_mask"])
    sel = b["token_sentence"][0] == 1
    assert torch.allclose(pooled[0, 1], states[0, sel].mean(0), atol=1e-6)
    assert mask.tolist() == b["sentence_mask"].tolist()


def test_similarity_is_pva_and_matches_more_sentences_than_queries(bert, tok):
    m = B.BratModel(_cfg(num_queries=2), bert=bert).eval()
    b = _batch(tok)  # reports with up to 4 sentences, 2 queries
    with torch.no_grad():
        V = m.encode_image(b["image"])["views"]
        F, mask = m.encode_text(b)
        sim = m.similarity(V, F, mask)
        ref, _ = L.pva_similarity_literal(V, F, mask)
    assert torch.allclose(sim.double(), ref, atol=1e-5)
    _, pairs = L.pva_similarity(V, F, mask, return_matches=True)
    assert (pairs[3, 3, :, 0] >= 0).sum() == 2  # min(N_Q, S) pairs


@pytest.mark.parametrize("name", list(B.ABLATIONS))
def test_every_table2_ablation_builds_and_trains_one_step(name, bert, tok):
    cfg = B.config_for_ablation(_cfg(), name)
    m = B.BratModel(cfg, bert=bert).train()
    m.set_itg_vocab(torch.arange(260))
    loss, logs = m.loss(_batch(tok))
    loss.backward()
    assert torch.isfinite(loss)
    assert ("dpp" in logs) == (cfg.diversity == "dpp") and ("repulsion" in logs) == (cfg.diversity == "repulsion")
    assert ("itg" in logs) == (cfg.itg_weight > 0 and cfg.image_views == "queries")
    with torch.no_grad():
        m.eval()
        V = m.encode_image(_batch(tok)["image"])["views"]
    assert V.shape[1] == (1 if name == "clip" else 4)
    assert set(B.TABLE2_NAMES) == set(B.ABLATIONS)


def test_embed_dataset_and_retrieval_similarity(bert, tok):
    m = B.BratModel(_cfg(), bert=bert)
    b = _batch(tok, n=6)
    ds = B.PairDataset(b.pop("image"), b)
    dl = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=B.collate)
    e = B.embed_dataset(m, dl)
    assert e["V"].shape == (6, 4, 16) and e["attention"].shape == (6, 4, 32) and e["F"].shape[0] == 6
    s = B.retrieval_similarity(m, e, chunk_size=4)
    assert s.shape == (6, 6)
    assert torch.allclose(s, m.similarity(e["V"], e["F"], e["mask"]), atol=1e-6)


def test_cached_text_states_give_the_same_loss(bert, tok):
    torch.manual_seed(0)
    m = B.BratModel(_cfg(train_text=False, itg_weight=0.0, dropout=0.0), bert=bert).eval()
    b = _batch(tok)
    with torch.no_grad():
        direct = m.encode_text(b)[0]
        b2 = dict(b, text_states=B.cache_text_states(m, b))
        cached = m.encode_text(b2)[0]
    assert torch.allclose(direct, cached, atol=1e-5)
    assert not any(p.requires_grad for p in m.text.parameters())
    with pytest.raises(ConfigError, match="trained"):
        B.cache_text_states(B.BratModel(_cfg(), bert=bert), b)


# -------------------------------------------------------------------------------------- bad input
def test_bad_configurations_are_refused(bert):
    with pytest.raises(ConfigError, match="backbone"):
        _cfg(backbone="resnet").validate()
    with pytest.raises(ConfigError, match="dpp"):
        _cfg(image_views="pooled", diversity="dpp").validate()
    with pytest.raises(ConfigError, match="matching"):
        _cfg(matching="hungarian").validate()
    with pytest.raises(ConfigError, match="ablation"):
        B.config_for_ablation(_cfg(), "brat_v2")
    with pytest.raises(ConfigError, match="feature grid"):
        B.DenseNetTokens("densenet-tiny", "denseblock4", 1, (8, 8, 8))


def test_bad_batches_are_refused(bert, tok):
    m = B.BratModel(_cfg(), bert=bert).train()
    m.set_itg_vocab(torch.arange(260))
    b = _batch(tok)
    with pytest.raises(ConfigError, match="at least 2"):
        m.loss({k: v[:1] for k, v in b.items()})
    with pytest.raises(ConfigError, match="grid"):
        m.loss(dict(b, image=torch.randn(4, 1, 16, 16, 16)))
    nan = b["image"].clone()
    nan[0] = float("nan")
    with pytest.raises(ConfigError, match="finite"):
        m.loss(dict(b, image=nan))
    m.set_itg_vocab([0, 1, 2])
    with pytest.raises(ConfigError, match="outside the restricted vocabulary"):
        m.loss(b)


def test_pair_dataset_refuses_mismatched_lengths(tok):
    b = _batch(tok)
    with pytest.raises(DataError, match="as many reports as images"):
        B.PairDataset(torch.zeros(3, 1, *GRID), {k: v for k, v in b.items() if k != "image"})
