import dataclasses

import pytest

from brainkit import profiles
from brainkit.errors import ConfigError


def test_three_profiles_frozen():
    assert profiles.names() == ["smoke", "colab", "full"]
    cfg = profiles.resolve("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data_subjects = 3  # type: ignore[misc]


def test_override_single_field_leaves_base_untouched():
    cfg = profiles.resolve("smoke", data_subjects=7, data_msd_spacing_mm=2.5)
    assert cfg.data_subjects == 7 and cfg.data_msd_spacing_mm == 2.5
    assert profiles.resolve("smoke").data_subjects == profiles.SMOKE.data_subjects != 7


def test_none_override_keeps_profile_value():
    assert profiles.resolve("colab", data_subjects=None).data_subjects == profiles.COLAB.data_subjects


def test_unknown_profile_lists_valid():
    with pytest.raises(ConfigError) as err:
        profiles.resolve("smokey")
    assert "smokey" in str(err.value) and "smoke, colab, full" in str(err.value)


def test_unknown_field_lists_valid_fields():
    with pytest.raises(ConfigError) as err:
        profiles.resolve("smoke", data_subject=3)
    msg = str(err.value)
    assert "data_subject" in msg and "data_subjects" in msg and "mixed_precision" in msg


@pytest.mark.parametrize("field,value", [("data_subjects", "many"), ("data_subjects", 2.5),
                                         ("data_volume_shape", (1, 2)), ("mixed_precision", 16),
                                         ("data_subjects", True)])
def test_wrong_type_rejected(field, value):
    with pytest.raises(ConfigError) as err:
        profiles.resolve("smoke", **{field: value})
    assert field in str(err.value)


def test_list_given_for_tuple_field_is_converted():
    assert profiles.resolve("smoke", data_volume_shape=[32, 32, 24]).data_volume_shape == (32, 32, 24)


def test_int_accepted_for_float_field():
    assert profiles.resolve("smoke", data_msd_spacing_mm=0).data_msd_spacing_mm == 0.0


def test_name_cannot_be_overridden():
    with pytest.raises(ConfigError):
        profiles.resolve("smoke", name="full")


def test_colab_and_full_use_no_tiny_or_offline_models():
    for prof in (profiles.COLAB, profiles.FULL):
        for f in dataclasses.fields(prof):
            value = getattr(prof, f.name)
            if isinstance(value, str):
                assert not value.startswith(("tiny:", "offline:")), f"{prof.name}.{f.name} = {value}"
        assert prof.data_source == "real"


def test_describe_has_every_field():
    rows = profiles.describe()
    assert [r["field"] for r in rows] == [f.name for f in dataclasses.fields(profiles.Profile)]
    assert all(set(r) == {"field", "smoke", "colab", "full"} for r in rows)
