"""brat model (notebooks 08-09): tokenisation into sentences, the Q-Former initialised from a BERT,
the loss and its parts, the Table 2 ablations as configurations, and bad input."""

import logging

import pytest
import torch
import torch.nn.functional as nnf

from brainkit.errors import ConfigError, DataError
from brainkit.hub import load_model, load_tokenizer
from brainkit.methods import brat as B
from brainkit.methods.brat import losses as L

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


def _assert_pva_matches_literal(V, F, mask):
    """The vectorised PVA takes the same (view, sentence) pairs in the same order as Algorithm 1."""
    ref_sim, ref = L.pva_similarity_literal(V, F, mask)
    sim, pairs = L.pva_similarity(V, F, mask, return_matches=True)
    got = [[[tuple(p) for p in pairs[i, j].tolist() if p[0] >= 0] for j in range(F.shape[0])]
           for i in range(V.shape[0])]
    assert got == ref
    invalid = pairs[..., 0] < 0
    assert torch.equal(invalid, pairs[..., 1] < 0)  # -1 marks both halves of the missing pairs
    assert (invalid[..., 1:] >= invalid[..., :-1]).all()  # ... and only trailing steps
    assert torch.allclose(sim.double(), ref_sim, rtol=0, atol=1e-5)
    chunked = L.pva_similarity(V, F, mask, chunk_size=2)
    assert torch.allclose(chunked.double(), ref_sim, rtol=0, atol=1e-5)


@pytest.mark.parametrize("Nq,S", [(6, 4), (3, 7)])
def test_pva_greedy_matches_literal_with_many_ties(Nq, S):
    # embeddings with four entries of +-1: normalised entries are +-1/2, so every cosine is an exact
    # multiple of 1/4 in [-1, 1] (whatever the summation order) and most of the N_q x S cosines tie
    g = torch.Generator().manual_seed(3)

    def grid(*shape, d=8):
        x = torch.zeros(*shape, d)
        idx = torch.rand(*shape, d, generator=g).argsort(-1)[..., :4]
        signs = torch.randint(0, 2, (*shape, 4), generator=g).float() * 2 - 1
        return x.scatter_(-1, idx, signs)

    V, F = grid(5, Nq), grid(4, S)
    cos = L._cosines(nnf.normalize(V, dim=-1), nnf.normalize(F, dim=-1))
    assert torch.equal(cos * 4, (cos * 4).round())  # exact grid ...
    assert cos.unique().numel() <= 9  # ... with many ties
    _assert_pva_matches_literal(V, F, None)
    mask = torch.ones(4, S, dtype=torch.bool)
    mask[1, 1:] = False
    mask[2, 0] = False
    _assert_pva_matches_literal(V, F, mask)


def test_pva_greedy_matches_literal_with_padded_sentences():
    g = torch.Generator().manual_seed(4)
    B_img, B_rep, Nq, S, d = 4, 6, 5, 8, 16
    V = torch.randn(B_img, Nq, d, generator=g)
    F = torch.randn(B_rep, S, d, generator=g)
    lengths = [8, 1, 3, 5, 2, 6]  # more and fewer sentences than views
    mask = torch.arange(S)[None] < torch.tensor(lengths)[:, None]
    mask[5, 2] = False  # a hole inside a report, not only trailing padding
    F[~mask] = V[0, 0] * 10  # padding that would win every match if it were ever considered
    _assert_pva_matches_literal(V, F, mask)
    _, pairs = L.pva_similarity(V, F, mask, return_matches=True)
    assert pairs.shape == (B_img, B_rep, Nq, 2)
    taken = (pairs[..., 0] >= 0).sum(-1)
    assert taken.tolist() == [[min(Nq, n) for n in [8, 1, 3, 5, 2, 5]]] * B_img
    s, valid = pairs[..., 1], pairs[..., 1] >= 0
    report = torch.arange(B_rep)[None, :, None].expand_as(s)
    assert mask[report[valid], s[valid]].all()  # padded sentences are never matched


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


# ------------------------------------------------- flip augmentation, text centring, checkpoints (nb 08-09)
def test_swap_sides_keeps_case_and_only_whole_words():
    src = "Left frontal mass; midline shift to the right. RIGHT lateral ventricle. Leftover words stay."
    out = B.swap_sides(src)
    assert out == "Right frontal mass; midline shift to the left. LEFT lateral ventricle. Leftover words stay."
    assert B.swap_sides(out) == src


def test_pair_dataset_flip_mirrors_image_and_swaps_report(tok):
    reps = ["A mass in the left frontal lobe.", "Normal study."]
    both = B.tokenize_reports(tok, reps + [B.swap_sides(r) for r in reps], max_tokens=64)
    text = {k: v[:2] for k, v in both.items()}
    flipped = {k: v[2:] for k, v in both.items()}
    images = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 1, 4, 2, 2)
    ds = B.PairDataset(images, text, flipped, flip_prob=1.0)
    it = ds[0]
    assert torch.equal(it["image"], images[0].flip(1))
    assert torch.equal(it["input_ids"], flipped["input_ids"][0])
    assert not torch.equal(it["input_ids"], text["input_ids"][0])
    plain = B.PairDataset(images, text)[0]
    assert torch.equal(plain["image"], images[0]) and torch.equal(plain["input_ids"], text["input_ids"][0])
    # a mix at p=0.5 over many draws, reproducible from the seed
    draws = [bool(torch.equal(B.PairDataset(images, text, flipped, 0.5, seed=3)[1]["image"], images[1]))
             for _ in range(1)]
    seq = lambda: [torch.equal(d["image"], images[1]) for d in (lambda ds: [ds[1] for _ in range(40)])(
        B.PairDataset(images, text, flipped, 0.5, seed=3))]
    a, b = seq(), seq()
    assert a == b and 5 < sum(a) < 35 and draws


def test_pair_dataset_flip_refuses_bad_arguments(tok):
    text = B.tokenize_reports(tok, ["A mass in the left lobe.", "Normal."], max_tokens=64)
    images = torch.zeros(2, 1, 4, 2, 2)
    with pytest.raises(ConfigError, match="flip_prob"):
        B.PairDataset(images, text, flip_prob=1.5)
    with pytest.raises(ConfigError, match="flipped_text"):
        B.PairDataset(images, text, flip_prob=0.5)
    short = {k: v[:, :3] for k, v in text.items()}
    with pytest.raises(DataError, match="flipped_text"):
        B.PairDataset(images, text, short, flip_prob=0.5)


def test_text_center_is_the_mean_pooled_embedding_and_is_subtracted(bert, tok):
    torch.manual_seed(0)
    m = B.BratModel(_cfg(train_text=False), bert=bert).eval()
    text = B.tokenize_reports(tok, REPORTS, max_tokens=96)
    text["text_states"] = B.cache_text_states(m, text)
    pooled, mask = m.pool_sentences(text["text_states"], text["token_sentence"], text["sentence_mask"])
    F0, _ = m.encode_text(text)
    m.set_text_center(text)
    assert torch.allclose(m.text_center, pooled[mask].mean(0), atol=1e-5)
    F1, _ = m.encode_text(text)
    expect = F0 - m.text_proj.weight @ m.text_center
    assert torch.allclose(F1, expect, atol=1e-5)
    assert "text_center" in m.state_dict()
    m.set_text_center(None)
    assert float(m.text_center.abs().sum()) == 0.0


def test_save_and_load_pretrained_round_trip_and_keys(bert, tmp_path):
    from brainkit.profiles import resolve

    cfg = resolve("smoke")
    c = _cfg(train_text=False)
    key = B.run_key(cfg, c, steps=10, seed=0)
    assert key == B.run_key(cfg, c, steps=10, seed=0)
    assert key != B.run_key(cfg, c, steps=11, seed=0) and key != B.run_key(cfg, c, steps=10, seed=1)
    assert key != B.run_key(resolve("smoke", brat_lr_backbone=0.5), c, steps=10, seed=0)
    torch.manual_seed(0)
    a = B.BratModel(c, bert=bert)
    with torch.no_grad():
        a.text_center.fill_(0.25)
    path = B.save_pretrained(a, tmp_path / "ck", key=key, meta={"notebook": "test"})
    from safetensors.torch import load_file

    assert not any(k.startswith("text.") for k in load_file(str(path)))  # the frozen BERT is not stored
    torch.manual_seed(1)
    b = B.BratModel(c, bert=bert)
    assert not B.load_pretrained(b, tmp_path / "missing", key=key)
    assert not B.load_pretrained(b, tmp_path / "ck", key="another-run")
    assert B.load_pretrained(b, tmp_path / "ck", key=key)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n


def test_load_pretrained_names_a_damaged_checkpoint(bert, tmp_path):
    from brainkit.profiles import resolve

    c = _cfg(train_text=False)
    key = B.run_key(resolve("smoke"), c, steps=1, seed=0)
    m = B.BratModel(c, bert=bert)
    B.save_pretrained(m, tmp_path / "ck", key=key)
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="model.safetensors"):
        B.load_pretrained(m, tmp_path / "ck", key=key)
    (tmp_path / "ck" / "meta.json").write_text("{broken")
    with pytest.raises(DataError, match="meta.json"):
        B.load_pretrained(m, tmp_path / "ck", key=key)
    other = B.BratModel(_cfg(train_text=False, num_queries=6), bert=bert)
    B.save_pretrained(m, tmp_path / "ck2", key=key)
    with pytest.raises(DataError, match="keys|safetensors"):
        B.load_pretrained(other, tmp_path / "ck2", key=key)


def test_pretrain_refuses_an_unknown_epoch_choice(bert):
    from brainkit.profiles import resolve

    m = B.BratModel(_cfg(train_text=False), bert=bert)
    with pytest.raises(ConfigError, match="select"):
        B.pretrain(m, {"text": {}}, resolve("smoke"), select="best")


def test_cache_text_once_shared_and_kept_on_disk(bert, tok, tmp_path):
    from brainkit.profiles import resolve

    cfg = resolve("smoke", brat_max_text_tokens=96)
    recs = [{"case_id": f"c{i}", "report": REPORTS[i % len(REPORTS)]} for i in range(4)]
    text = {k: B.tokenize_reports(tok, [r["report"] for r in recs], max_tokens=96) for k in ("train", "val")}
    data = {"splits": {"train": recs, "val": recs}, "text": text, "tokenizer": tok}
    B.add_flipped_text(data, cfg)
    assert data["text_flipped"]["input_ids"].shape == data["text"]["train"]["input_ids"].shape
    m = B.BratModel(_cfg(train_text=False), bert=bert)
    f = tmp_path / "text.safetensors"
    B.cache_text(m, data, file=f)
    assert f.is_file()
    direct = B.cache_text_states(m, data["text_flipped"])
    assert torch.allclose(data["text_flipped"]["text_states"], direct, atol=1e-5)
    # a second data dict reads the file (same ids) and gets the same states
    data2 = {"splits": data["splits"], "tokenizer": tok,
             "text": {k: {kk: vv for kk, vv in v.items() if kk != "text_states"} for k, v in data["text"].items()},
             "text_flipped": {k: v for k, v in data["text_flipped"].items() if k != "text_states"}}
    B.cache_text(m, data2, file=f)
    for k in ("train", "val"):
        assert torch.equal(data2["text"][k]["text_states"], data["text"][k]["text_states"])
    # other reports -> recomputed, not read
    data3 = {"splits": data["splits"], "tokenizer": tok,
             "text": {k: B.tokenize_reports(tok, ["Normal study."] * 4, max_tokens=96) for k in ("train", "val")}}
    B.cache_text(m, data3, file=f)
    assert torch.allclose(data3["text"]["val"]["text_states"], B.cache_text_states(m, data3["text"]["val"]), atol=1e-5)
    with pytest.raises(ConfigError, match="train_text"):
        B.cache_text(B.BratModel(_cfg(train_text=True), bert=bert), data)
