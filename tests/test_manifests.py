"""brainkit.data.manifests: manifests, verification of damaged sets, patient-level splits."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from brainkit.cli import main as cli_main
from brainkit.data import formats, layouts, manifests
from brainkit.data.manifests import check_no_leak, make_splits, split_counts, split_groups, verify
from brainkit.data.phantoms import generate_cohort
from brainkit.errors import ConfigError, DataError, MissingAssetError

REAL = ("brats2020", "textbrats", "msd_task01", "figshare_brain_tumor", "kaggle_brain_tumor_mri")


@pytest.fixture(scope="module")
def phantom_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    subjects = generate_cohort(6, seed=4, shape=(32, 32, 24), with_head=True)
    out = {}
    for lay in ("brats2020", "figshare"):
        out[lay] = layouts.write_phantom_dataset(root / lay, lay, subjects, slice_size=48)
    return out


# ---------------------------------------------------------------------------------------------- manifests
@pytest.mark.parametrize("name", REAL)
def test_real_manifests_are_complete(name):
    m = manifests.load_manifest(name)
    for key in ("source_url", "licence", "access", "citation", "expected", "split"):
        assert m.get(key), (name, key)
    assert m["access"] in ("open", "gated")
    if m["access"] == "gated":
        assert m.get("access_steps"), name
    assert "group_by" in m["split"] and "rule" in m["split"]
    assert name in manifests.list_manifests()
    assert m["name"] in manifests.access_instructions(name)


def test_unknown_manifest():
    with pytest.raises((ConfigError, DataError), match="nosuchset"):
        manifests.load_manifest("nosuchset")


def test_locate_gated_set_explains_how_to_obtain_it(tmp_path):
    with pytest.raises(MissingAssetError, match="brats2020.*BraTS"):
        manifests.locate("brats2020", tmp_path)


# ---------------------------------------------------------------------------------------------- verify
def test_intact_phantom_set_verifies(phantom_sets):
    for root in phantom_sets.values():
        rep = verify("phantom", root)
        assert rep.ok, str(rep)
        assert rep.expected == len(json.loads((root / formats.MANIFEST_FILE).read_text())["files"])


def test_verify_reports_a_deliberately_damaged_phantom_set(phantom_sets, tmp_path, capsys):
    import shutil

    root = tmp_path / "damaged"
    shutil.copytree(phantom_sets["brats2020"], root)
    (root / "BraTS20_Training_002" / "BraTS20_Training_002_t1.nii.gz").unlink()  # missing
    trunc = root / "BraTS20_Training_003" / "BraTS20_Training_003_seg.nii.gz"
    trunc.write_bytes(trunc.read_bytes()[:64])  # truncated
    flip = root / "BraTS20_Training_004" / "BraTS20_Training_004_flair.nii.gz"
    data = bytearray(flip.read_bytes())
    data[-10] ^= 0xFF  # same size, different content
    flip.write_bytes(bytes(data))
    (root / "BraTS20_Training_001" / "notes.txt").write_text("stray file")  # extra
    rep = verify("phantom", root)
    assert not rep.ok
    assert rep.missing == ["BraTS20_Training_002/BraTS20_Training_002_t1.nii.gz"]
    assert rep.extra == ["BraTS20_Training_001/notes.txt"]
    assert set(rep.corrupt) == {"BraTS20_Training_003/BraTS20_Training_003_seg.nii.gz",
                                "BraTS20_Training_004/BraTS20_Training_004_flair.nii.gz"}
    assert "size" in rep.corrupt["BraTS20_Training_003/BraTS20_Training_003_seg.nii.gz"]
    assert "sha256" in rep.corrupt["BraTS20_Training_004/BraTS20_Training_004_flair.nii.gz"]
    # the command line prints the same and exits 1; the real manifest's name works too
    for name in ("phantom", "brats2020"):
        assert cli_main(["data", "verify", name, str(root)]) == 1
        out = capsys.readouterr().out
        assert "1 missing, 2 corrupt, 1 extra" in out and "NOT OK" in out
        assert "BraTS20_Training_002_t1.nii.gz" in out and "notes.txt" in out
    assert cli_main(["data", "verify", "phantom", str(phantom_sets["brats2020"])]) == 0
    assert cli_main(["data", "verify", "phantom", str(tmp_path / "absent")]) == 1


def test_verify_real_layout_without_phantom_manifest(phantom_sets, tmp_path):
    """A download (no brainkit manifest) is checked against data_manifests/: counts and contents."""
    import shutil

    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    shutil.copytree(phantom_sets["brats2020"], root)
    (root / formats.MANIFEST_FILE).unlink()
    seg = root / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz"
    seg.write_bytes(seg.read_bytes()[: len(seg.read_bytes()) // 2])
    rep = verify("brats2020", tmp_path)  # found one level down through root_hints
    assert rep.root == root
    assert "BraTS20_Training_001/BraTS20_Training_001_seg.nii.gz" in rep.corrupt
    assert "BraTS20_Training_369/BraTS20_Training_369_flair.nii.gz" in rep.missing
    assert len(rep.missing) == (369 - 6) * 5


def test_verify_figshare_set_and_a_v5_file(phantom_sets, tmp_path):
    import shutil

    from scipy.io import savemat

    root = tmp_path / "fig"
    shutil.copytree(phantom_sets["figshare"], root)
    (root / formats.MANIFEST_FILE).unlink()
    first = sorted(root.glob("*.mat"), key=lambda p: int(p.stem))[0]
    savemat(first, {"cjdata": {"label": 1.0}})
    rep = verify("figshare_brain_tumor", root)
    assert first.name in rep.corrupt and "v7.3" in rep.corrupt[first.name]


# ---------------------------------------------------------------------------------------------- splits
def _slice_records(n_patients=60, per=(1, 5), seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    recs = []
    for p in range(n_patients):
        label = ["glioma", "meningioma", "pituitary"][p % 3]
        for k in range(int(rng.integers(per[0], per[1] + 1))):
            recs.append({"pid": f"P{p:03d}", "label": label, "slice": k})
    return recs


def test_no_patient_in_two_splits():
    recs = _slice_records()
    splits = make_splits(recs, group_key="pid", stratify_key="label")
    check_no_leak(splits, "pid")
    sets = [{r["pid"] for r in v} for v in splits.values()]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sum(len(v) for v in splits.values()) == len(recs)


def test_leak_is_detected():
    leaking = {"train": [{"pid": "P1"}, {"pid": "P2"}], "test": [{"pid": "P2"}]}
    with pytest.raises(DataError, match="'P2' in 'train' and 'test'"):
        check_no_leak(leaking, "pid")


def test_splits_are_stratified_deterministic_and_order_free():
    recs = _slice_records(90)
    a = make_splits(recs, group_key="pid", stratify_key="label", seed=1)
    b = make_splits(list(reversed(recs)), group_key="pid", stratify_key="label", seed=1)
    key = lambda v: sorted((r["pid"], r["slice"]) for r in v)  # noqa: E731
    assert all(key(a[s]) == key(b[s]) for s in a)
    pats = {s: Counter(r["label"] for r in {r["pid"]: r for r in v}.values()) for s, v in a.items()}
    for label in ("glioma", "meningioma", "pituitary"):
        assert pats["train"][label] == 21 and pats["val"][label] == 3 and pats["test"][label] == 6
    c = make_splits(recs, group_key="pid", stratify_key="label", seed=2)
    assert key(c["test"]) != key(a["test"])
    counts = split_counts(a, key="label", group_key="pid")
    assert counts["test"]["groups"] == 18


def test_split_groups_fractions_and_bad_fractions():
    assign = split_groups([f"g{i}" for i in range(100)])
    assert Counter(assign.values()) == {"train": 70, "val": 10, "test": 20}
    with pytest.raises(ConfigError, match="fractions"):
        split_groups(["a"], fractions=[-1, 2])
    with pytest.raises(ConfigError, match="strata"):
        split_groups(["a", "b"], strata=["x"])


def test_phantom_manifest_records_split_by_subject(phantom_sets):
    man = formats.load_phantom_manifest(phantom_sets["figshare"])
    recs = [dict(r, pid=r["subject_id"]) for r in man["records"]]
    splits = make_splits(recs, group_key="pid", stratify_key="label")
    check_no_leak(splits, "pid")
