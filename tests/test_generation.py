"""brainkit.generation: tower -> compressor -> projector -> causal LM, the stages, generation."""

import pytest
import torch

from brainkit.errors import CheckpointError, ConfigError, DataError
from brainkit.generation import GENERATION, ReportVLM, load_language_model
from brainkit.hub import load_model
from brainkit.methods.braingemma3d.inflate import inflate_vision_tower
from brainkit.train import load_weights, save_weights


def _tower(seed=0):
    v2d = load_model("tiny:siglip", kind="siglip_vision", seed=seed, vision_image_size=32, vision_num_hidden_layers=1)
    return inflate_vision_tower(v2d, depth_kernel=2)


def _vlm(num_tokens=4, compressor="perceiver", max_report_tokens=64):
    lm, tok = load_language_model("tiny:gemma3", seed=0)
    return ReportVLM(_tower(), lm, tok, num_tokens=num_tokens, compressor=compressor,
                     max_report_tokens=max_report_tokens)


VOL = torch.randn(2, 1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
REPORTS = ["Left frontal mass with oedema.", "No abnormality."]


def test_inputs_layout_and_labels_mask_the_context():
    m = _vlm()
    inp = m.build_inputs(VOL, REPORTS)
    bos, pids = m._prompt_ids(None)
    n_ctx = len(bos) + 4 + len(pids)
    rids = m.report_ids(REPORTS)
    assert inp["inputs_embeds"].shape == (2, n_ctx + max(map(len, rids)), m.d_lm)
    lab = inp["labels"]
    assert (lab[:, :n_ctx] == -100).all()
    for i, r in enumerate(rids):
        assert lab[i, n_ctx:n_ctx + len(r)].tolist() == r
        assert (lab[i, n_ctx + len(r):] == -100).all()
        assert int(inp["attention_mask"][i].sum()) == n_ctx + len(r)
    assert rids[0][-1] == m.tokenizer.eos_token_id


def test_phase2a_trains_the_projector_only():
    m = _vlm()
    names = m.set_stage("phase2a")
    assert names and all(n.startswith(("projector.", "vis_scale")) for n in names)
    loss = m.loss(VOL, REPORTS)
    assert torch.isfinite(loss)
    loss.backward()
    assert m.projector[0].weight.grad is not None and m.projector[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.vision.parameters())
    assert all(p.grad is None for p in m.lm.parameters())


def test_phase1_infonce_refuses_a_batch_of_one_and_trains_the_vision_side():
    m = _vlm()
    m.set_stage("phase1")
    with pytest.raises(ConfigError, match="at least 2"):
        m.contrastive_loss(VOL[:1], REPORTS[:1], 1 / 0.07)
    loss = m.contrastive_loss(VOL, REPORTS, 1 / 0.07)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.vision.parameters())
    assert all(p.grad is None for p in m.lm.parameters())


def test_phase2b_needs_lora_then_trains_it():
    m = _vlm()
    with pytest.raises(ConfigError, match="add_lora"):
        m.set_stage("phase2b")
    m.add_lora(rank=4)
    names = m.set_stage("phase2b")
    lora = [n for n in names if "lora_" in n]
    assert lora and all(any(t in n for t in ("q_proj", "k_proj", "v_proj", "o_proj")) for n in lora)
    m.loss(VOL, REPORTS).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in m.named_parameters() if "lora_B" in n)
    with pytest.raises(ConfigError, match="already"):
        m.add_lora()


def test_pool_compressor_and_vis_scale_calibration():
    m = _vlm(compressor="pool")
    s = m.calibrate_vis_scale(VOL)
    vis = m.visual_tokens(VOL)
    _, pids = m._prompt_ids(None)
    txt = m._embed(torch.tensor(pids))
    assert s > 0
    assert abs(float(vis.pow(2).mean().sqrt()) - float(txt.pow(2).mean().sqrt())) < 1e-3


def test_generate_report_and_nll():
    m = _vlm().eval()
    torch.manual_seed(0)
    out = m.generate_report(VOL, max_new_tokens=8)
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(t, str) for t in out)
    greedy = m.generate_report(VOL, max_new_tokens=8, do_sample=False)
    assert greedy == m.generate_report(VOL, max_new_tokens=8, do_sample=False)
    nll = m.report_nll(VOL, REPORTS)
    assert nll.shape == (2,) and torch.isfinite(nll).all() and (nll > 0).all()
    assert GENERATION["temperature"] == 0.1 and GENERATION["top_p"] == 0.9 and GENERATION["max_new_tokens"] == 256
    assert GENERATION["repetition_penalty"] == 1.2 and GENERATION["no_repeat_ngram_size"] == 3


def test_bad_inputs_raise_clear_errors(tmp_path):
    m = _vlm(max_report_tokens=16)
    with pytest.raises(DataError, match="5D"):
        m.loss(torch.randn(32, 32), REPORTS)
    bad = VOL.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        m.loss(bad, REPORTS)
    with pytest.raises(DataError, match=r"reports\[1\].*non-empty"):
        m.loss(VOL, ["fine", "  "])
    with pytest.raises(DataError, match=r"reports\[0\].*at most 15 tokens"):
        m.loss(VOL, ["a much longer report than sixteen bytes", "ok"])
    with pytest.raises(DataError, match="one per volume"):
        m.loss(VOL, ["only one"])
    # a checkpoint from another configuration (8 visual tokens vs 4)
    m.set_stage("phase1")
    other = _vlm(num_tokens=8)
    other.set_stage("phase1")
    save_weights(other, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="other.safetensors.*another model configuration"):
        load_weights(m, tmp_path / "other.safetensors")


def test_tiny_models_cannot_be_quantised():
    with pytest.raises(ConfigError, match="4-bit"):
        load_language_model("tiny:gemma3", quantize_4bit=True)


@pytest.mark.slow
def test_real_gemma3_270m_in_4bit_with_lora_trains_two_steps_and_generates():
    pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    lm, tok = load_language_model("offline:gemma3-270m", quantize_4bit=True)
    assert any("Linear4bit" in type(mod).__name__ for mod in lm.modules())
    m = ReportVLM(_tower(), lm, tok, num_tokens=4)
    m.calibrate_vis_scale(VOL)
    m.add_lora(rank=4)
    m.set_stage("phase2b")
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    before = {n: p.detach().clone() for n, p in m.named_parameters() if "lora_B" in n}
    losses = []
    for _ in range(2):
        loss = m.loss(VOL, REPORTS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any((p.detach() - before[n]).abs().max() > 0 for n, p in m.named_parameters() if n in before)
    m.eval()
    out = m.generate_report(VOL[:1], max_new_tokens=6)
    assert len(out) == 1 and isinstance(out[0], str)


def test_stage_checkpoint_round_trip_and_other_configuration_is_refused(tmp_path):
    from brainkit.methods.braingemma3d.model import SliceTower2D

    m = _vlm()
    m.set_stage("phase2a")
    with torch.no_grad():
        m.projector[0].weight.add_(0.5)
        m.vis_scale.fill_(3.0)
    path = m.save_stage(tmp_path / "phase2a" / "stage.safetensors", step=7)
    fresh = _vlm()
    assert not torch.equal(fresh.projector[0].weight, m.projector[0].weight)
    assert fresh.load_stage(path) == {"step": 7}
    assert torch.equal(fresh.projector[0].weight, m.projector[0].weight) and float(fresh.vis_scale) == 3.0
    assert torch.allclose(fresh.report_nll(VOL, REPORTS), m.report_nll(VOL, REPORTS))
    # another configuration: 8 visual tokens, the pool compressor, LoRA added, another vision tower
    for other in (_vlm(num_tokens=8), _vlm(compressor="pool")):
        with pytest.raises(CheckpointError, match=r"stage\.safetensors.*another ReportVLM configuration"):
            other.load_stage(path)
    lora = _vlm()
    lora.add_lora(rank=4)
    with pytest.raises(CheckpointError, match=r"stage\.safetensors.*lora"):
        lora.load_stage(path)
    lm, tok = load_language_model("tiny:gemma3", seed=0)
    v2d = load_model("tiny:siglip", kind="siglip_vision", seed=0, vision_image_size=32, vision_num_hidden_layers=1)
    flat = ReportVLM(SliceTower2D(v2d), lm, tok, num_tokens=4)
    with pytest.raises(CheckpointError, match=r"stage\.safetensors.*vision"):
        flat.load_stage(path)
    with pytest.raises(CheckpointError, match="not found"):
        fresh.load_stage(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        fresh.load_stage(tmp_path / "junk.safetensors")


def test_slice_tower_reads_the_middle_slice():
    from brainkit.methods.braingemma3d.model import SliceTower2D

    v2d = load_model("tiny:siglip", kind="siglip_vision", seed=0, vision_image_size=32, vision_num_hidden_layers=1)
    tower = SliceTower2D(v2d).eval()
    vol = VOL.clone()
    out = tower(vol)
    assert out.shape[0] == 2 and out.shape[-1] == tower.hidden_size
    vol[:, :, 0] += 5.0  # another slice changes nothing
    assert torch.equal(tower(vol), out)
    vol[:, :, vol.shape[2] // 2] += 1.0
    assert not torch.allclose(tower(vol), out)
    with pytest.raises(DataError, match="5D"):
        tower(torch.randn(32, 32))


def test_visual_tokens_zeroed_keeps_the_shape_and_removes_the_image():
    from brainkit.generation import visual_tokens_zeroed

    m = _vlm()
    with torch.no_grad():
        seen = m.report_nll(VOL, REPORTS)
        with visual_tokens_zeroed(m) as blind:
            z = blind.visual_tokens(VOL)
            assert z.shape == (2, 4, m.d_lm) and not z.any()
            a = blind.report_nll(VOL, REPORTS)
            b = blind.report_nll(torch.randn_like(VOL), REPORTS)  # the image no longer matters
        assert torch.equal(a, b) and not torch.allclose(a, seen)
        assert torch.equal(m.report_nll(VOL, REPORTS), seen)  # restored after the block


def test_word_tokenizer_round_trips_words_and_marks_unknown_ones():
    from brainkit.generation import word_tokenizer

    tok = word_tokenizer(["A glioma in the left frontal lobe.", "No lesion."])
    ids = tok("a glioma in the right lobe.")["input_ids"]
    assert ids[0] == tok.bos_token_id  # [BOS] before every text
    words = tok.convert_ids_to_tokens(ids[1:])
    assert words == ["a", "glioma", "in", "the", "[UNK]", "lobe", "."]  # "right" was never seen
    assert tok.decode(tok("No lesion.", add_special_tokens=False)["input_ids"]) == "no lesion."
    assert {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id} == {0, 1, 2, 3}
    with pytest.raises(DataError, match="texts"):
        word_tokenizer([])
