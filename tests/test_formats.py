"""brainkit.data.formats: the real datasets' layouts, round trips, and every bad input of issue 3."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainkit.data import formats, layouts
from brainkit.data.formats import (
    check_pair,
    load_label,
    load_volume,
    read_figshare_mat,
    read_report,
    save_volume,
)
from brainkit.data.labels import brats_to_msd
from brainkit.data.phantoms import generate_cohort
from brainkit.errors import ConfigError, DataError

AFF = np.diag([1.0, 1.0, 1.0, 1.0])


def _vol(shape=(10, 12, 8), seed=0):
    return np.random.default_rng(seed).uniform(1, 100, shape).astype(np.float32)


def _save(path: Path, arr, affine=AFF, dtype=None) -> Path:
    return save_volume(path, arr, affine, dtype)


@pytest.fixture(scope="module")
def subjects():
    return generate_cohort(8, seed=1, shape=(32, 32, 24), with_head=True)


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope_flair\.nii\.gz: file: expected an existing file"):
        load_volume(tmp_path / "nope_flair.nii.gz")


def test_truncated_nii_gz(tmp_path):
    p = _save(tmp_path / "BraTS20_Training_001_flair.nii.gz", _vol((40, 40, 30)))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"BraTS20_Training_001_flair\.nii\.gz: .*(truncated|NIfTI)"):
        load_volume(p)


def test_corrupt_gzip_bytes(tmp_path):
    p = _save(tmp_path / "corrupt.nii.gz", _vol((40, 40, 30)))
    data = bytearray(p.read_bytes())
    data[400:420] = b"\x00" * 20
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"corrupt\.nii\.gz"):
        load_volume(p)


def test_4d_where_3d_expected(tmp_path):
    p = _save(tmp_path / "four.nii.gz", _vol((6, 6, 5, 4)))
    with pytest.raises(DataError, match=r"four\.nii\.gz: dimensions: expected a 3D volume, found 4D"):
        load_volume(p)
    # a trailing singleton axis is not a fourth dimension
    q = _save(tmp_path / "single.nii.gz", _vol((6, 6, 5, 1)))
    assert load_volume(q).shape == (6, 6, 5)
    # and an MSD image must have 4 channels
    with pytest.raises(DataError, match="channels"):
        load_volume(_save(tmp_path / "three_ch.nii.gz", _vol((6, 6, 5, 3))), ndim=4, channels=4)


def test_image_and_label_of_different_shape_or_affine(tmp_path):
    img = load_volume(_save(tmp_path / "img.nii.gz", _vol((10, 12, 8))))
    lab_shape = load_label(_save(tmp_path / "seg_shape.nii.gz", np.zeros((10, 12, 9), np.uint8), dtype=np.uint8))
    with pytest.raises(DataError, match=r"seg_shape\.nii\.gz: shape: expected \(10, 12, 8\) like img\.nii\.gz"):
        check_pair(img, lab_shape)
    shifted = AFF.copy()
    shifted[0, 3] = 2.0
    lab_aff = load_label(_save(tmp_path / "seg_aff.nii.gz", np.zeros((10, 12, 8), np.uint8), shifted, np.uint8))
    with pytest.raises(DataError, match=r"seg_aff\.nii\.gz: affine: expected the affine of img\.nii\.gz"):
        check_pair(img, lab_aff)


def test_nan_or_infinite_voxels(tmp_path):
    arr = _vol()
    arr[1, 2, 3] = np.nan
    arr[2, 2, 2] = np.inf
    p = _save(tmp_path / "nan.nii.gz", arr)
    with pytest.raises(DataError, match=r"nan\.nii\.gz: voxel values: expected finite numbers, found 1 NaN and 1 inf"):
        load_volume(p)
    # documented alternative: replace by 0
    v = load_volume(p, nonfinite="zero")
    assert np.isfinite(v.array).all() and v.array[1, 2, 3] == 0


def test_all_zero_volume(tmp_path):
    p = _save(tmp_path / "zero_t1.nii.gz", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"zero_t1\.nii\.gz: voxel values: expected an image with signal, found all"):
        load_volume(p)
    assert load_volume(p, allow_empty=True).array.sum() == 0
    # an all-zero *label* is a healthy subject, not an error
    q = _save(tmp_path / "zero_seg.nii.gz", np.zeros((8, 8, 8), np.uint8), dtype=np.uint8)
    assert not load_label(q).array.any()


def test_label_values_outside_the_convention(tmp_path):
    seg = np.zeros((8, 8, 8), np.uint8)
    seg[2:4, 2:4, 2:4] = 3
    p = _save(tmp_path / "BraTS20_Training_002_seg.nii.gz", seg, dtype=np.uint8)
    with pytest.raises(DataError, match=r"BraTS20_Training_002_seg\.nii\.gz.*3"):
        load_label(p, "brats")
    assert set(np.unique(load_label(p, "msd").array)) == {0, 3}  # 3 is valid in MSD
    frac = np.zeros((8, 8, 8), np.float32)
    frac[1, 1, 1] = 0.5
    with pytest.raises(DataError, match=r"frac\.nii\.gz"):
        load_label(_save(tmp_path / "frac.nii.gz", frac), "brats")


def test_las_orientation_is_reoriented_to_ras(tmp_path):
    arr = _vol((10, 12, 8))
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    las[0, 3] = 9.0
    p = _save(tmp_path / "las.nii.gz", arr, las)
    v = load_volume(p)
    assert v.orientation == ("L", "A", "S")
    assert nib.aff2axcodes(v.affine) == ("R", "A", "S")
    assert np.allclose(v.array, arr[::-1])
    # the world coordinates of a voxel are unchanged by the reorientation
    ijk = np.array([2, 3, 4, 1.0])
    ras_ijk = np.array([10 - 1 - 2, 3, 4, 1.0])
    assert np.allclose(las @ ijk, v.affine @ ras_ijk)


def test_anisotropic_spacing_is_kept_and_resampled_by_the_method_chain(tmp_path):
    aff = np.diag([1.0, 1.0, 5.0, 1.0])
    p = _save(tmp_path / "aniso.nii.gz", _vol((20, 20, 6)), aff)
    v = load_volume(p)
    assert v.anisotropic and np.allclose(v.spacing, (1.0, 1.0, 5.0))
    assert v.shape == (20, 20, 6)  # never silently resampled on load
    from monai.transforms import Compose, Spacingd

    from brainkit.data.transforms import LoadVolumed

    out = Compose([LoadVolumed(keys="image"), Spacingd(keys="image", pixdim=(2.0, 2.0, 2.0))])({"image": str(p)})
    assert np.allclose(np.linalg.norm(np.asarray(out["image"].affine)[:3, :3], axis=0), 2.0)
    assert tuple(out["image"].shape[-3:])[:2] == (10, 10) and out["image"].shape[-1] in (14, 15)


def test_empty_or_non_utf8_report(tmp_path):
    e = tmp_path / "BraTS20_Training_003_flair_text.txt"
    e.write_bytes(b"")
    with pytest.raises(DataError, match=r"BraTS20_Training_003_flair_text\.txt: report text: expected a non-empty"):
        read_report(e)
    w = tmp_path / "ws.txt"
    w.write_text("  \n\t")
    with pytest.raises(DataError, match="only whitespace"):
        read_report(w)
    b = tmp_path / "latin1.txt"
    b.write_bytes("Läsion im linken Frontallappen".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: encoding: expected UTF-8 text, found byte 0xe4"):
        read_report(b)
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffLeft frontal mass.".encode())
    assert read_report(bom) == "Left frontal mass."


def test_matlab_v5_where_v73_expected(tmp_path):
    from scipy.io import savemat

    p = tmp_path / "17.mat"
    savemat(p, {"cjdata": {"image": np.zeros((4, 4), np.int16), "label": 1.0, "PID": "x", "tumorMask": np.zeros((4, 4))}})
    with pytest.raises(DataError, match=r"17\.mat: MAT-file version: expected MATLAB v7\.3.*found 'MATLAB 5\.0"):
        read_figshare_mat(p)
    junk = tmp_path / "18.mat"
    junk.write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match=r"18\.mat: file format"):
        read_figshare_mat(junk)


def test_nrrd_volume_loads_through_monai(tmp_path):
    import nrrd

    arr = _vol((6, 7, 5))
    p = tmp_path / "vol.nrrd"
    nrrd.write(str(p), arr, {"space": "right-anterior-superior", "space directions": np.eye(3),
                             "space origin": np.zeros(3)})
    v = load_volume(p)
    assert v.shape == (6, 7, 5) and np.allclose(v.array, arr)


def test_nothing_half_written_on_failure(tmp_path, subjects):
    bad = list(subjects[:3])
    broken = bad[2]
    seg = broken.seg.copy()
    seg[0, 0, 0] = 3  # outside the BraTS convention: the writer refuses it mid-way
    bad[2] = type(broken)(**{**broken.__dict__, "seg": seg})
    root = tmp_path / "brats"
    with pytest.raises(DataError):
        layouts.write_phantom_dataset(root, "brats2020", bad)
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left either


# ---------------------------------------------------------------------------------------------- round trips
def test_brats_textbrats_msd_round_trip(tmp_path, subjects):
    b = layouts.write_phantom_dataset(tmp_path / "brats2020", "brats2020", subjects)
    t = layouts.write_phantom_dataset(tmp_path / "textbrats", "textbrats", subjects)
    m = layouts.write_phantom_dataset(tmp_path / "msd", "msd_task01", subjects)
    cases = formats.find_brats2020(b)
    assert [c["case_id"] for c in cases] == [f"BraTS20_Training_{i:03d}" for i in range(1, 9)]
    reps = formats.find_textbrats(t)
    msd = formats.find_msd_task01(m)
    lesional = [s for s in subjects if not s.healthy]  # MSD's cases are gliomas: controls are not written to it
    assert len(msd) == len(lesional) < len(subjects)
    for s, case in zip(subjects, cases):
        got = formats.read_brats2020_case(case)
        assert np.array_equal(got.seg, s.seg)
        assert np.allclose(got.images["flair"], s.images["flair"], rtol=0, atol=s.images["flair"].max() / 20000 + 1e-3)
        assert read_report(reps[case["case_id"]]) == s.report.strip()
    for s, rec in zip(lesional, msd):
        ms = formats.read_msd_case(rec["image"], rec["label"])
        assert np.array_equal(ms.seg, s.seg)
        assert np.array_equal(load_label(rec["label"], "msd").array, brats_to_msd(s.seg))
    meta = json.loads((m / "dataset.json").read_text())
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["numTraining"] == len(lesional)


def test_brats_kaggle_nii_variant_and_case_355_seg_name(tmp_path, subjects):
    formats.write_brats2020(tmp_path, subjects[:2], ext=".nii")
    case = tmp_path / "BraTS20_Training_002"
    (case / "BraTS20_Training_002_seg.nii").rename(case / "W39_1998.09.19_Segm.nii")
    recs = formats.find_brats2020(tmp_path)
    assert recs[1]["seg"].name == "W39_1998.09.19_Segm.nii"
    assert np.array_equal(formats.read_brats2020_case(recs[1]).seg, subjects[1].seg)
    (case / "BraTS20_Training_002_t1ce.nii").unlink()
    with pytest.raises(DataError, match=r"BraTS20_Training_002_t1ce\.nii\.gz: file: expected an existing file"):
        formats.find_brats2020(tmp_path)


def test_figshare_and_kaggle_round_trip(tmp_path, subjects):
    f = layouts.write_phantom_dataset(tmp_path / "figshare", "figshare", subjects, slice_size=64)
    k = layouts.write_phantom_dataset(tmp_path / "kaggle", "kaggle", subjects, slice_size=64)
    files = formats.find_figshare(f)
    man = formats.load_phantom_manifest(f)
    assert len(files) == len(man["records"]) > 0
    for p, rec in zip(files, man["records"]):
        sl = read_figshare_mat(p)
        assert sl.image.shape == (64, 64) and sl.image.dtype == np.int16
        assert sl.class_name == rec["class_name"] and sl.pid == rec["subject_id"]
        assert sl.mask.any() and sl.border.shape[1] == 2
    imgs = formats.find_kaggle(k)
    kman = formats.load_phantom_manifest(k)
    assert len(imgs) == len(kman["records"])
    split_of = {}
    for r in kman["records"]:
        assert split_of.setdefault(r["subject_id"], r["split"]) == r["split"]  # grouped by subject
    assert {r["class_name"] for r in kman["records"]} <= {"glioma", "meningioma", "notumor"}
    assert formats.read_kaggle_image(imgs[0]["path"]).shape == (64, 64)


def test_ensure_phantom_generates_once_and_regenerates_a_damaged_set(tmp_path):
    from brainkit.profiles import resolve

    cfg = resolve("smoke", data_subjects=6, data_volume_shape=(32, 32, 24), data_slice_size=48)
    out = layouts.ensure_phantom(cfg, tmp_path, layouts=("brats2020", "textbrats"))
    stamp = {p: p.stat().st_mtime_ns for p in out["brats2020"].rglob("*.nii.gz")}
    again = layouts.ensure_phantom(cfg, tmp_path, layouts=("brats2020", "textbrats"))
    assert again == out and {p: p.stat().st_mtime_ns for p in out["brats2020"].rglob("*.nii.gz")} == stamp
    victim = next(iter(stamp))
    victim.write_bytes(victim.read_bytes()[:100])
    layouts.ensure_phantom(cfg, tmp_path, layouts=("brats2020",))
    assert load_volume(victim).shape == (32, 32, 24)
    with pytest.raises(ConfigError, match="layout"):
        layouts.ensure_phantom(cfg, tmp_path, layouts=("nifti",))


def test_gzip_sanity_of_written_files(tmp_path, subjects):
    p = _save(tmp_path / "x.nii.gz", subjects[0].images["t1"])
    with gzip.open(p) as fh:
        assert len(fh.read()) > 0
