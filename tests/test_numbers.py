"""Per-number profiles: validation, inheritance from default, reload semantics."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.numbers import ProfileStore, builtin_profiles, load_profiles, parse_profiles

GOOD = """
default:
  instructions: You are the front desk of Example Dental.
  voice: marin
numbers:
  "+1 (555) 123-0001":
    voice: cedar
    turn_detection: {type: semantic_vad, eagerness: high}
  "+15551230002":
    greeting: null
    fallback: {number: "+15550000000"}
"""


def test_numbers_inherit_the_default_and_override_fields(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text(GOOD)
    profiles = load_profiles(path)
    one = profiles.for_number("+15551230001")
    assert one.voice == "cedar"
    assert one.instructions == "You are the front desk of Example Dental."
    assert one.turn_detection is not None and one.turn_detection.type == "semantic_vad"
    two = profiles.for_number("+1 555 123 0002")
    assert two.greeting is None and two.fallback.number == "+15550000000"
    assert profiles.for_number("+19999999999") is profiles.default
    assert profiles.for_number(None) is profiles.default


def test_session_config_is_a_ga_session() -> None:
    cfg = builtin_profiles().default.session_config()
    assert cfg["type"] == "realtime"
    assert cfg["audio"]["output"]["voice"] == "marin"
    assert cfg["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert "voice" not in cfg and "modalities" not in cfg  # no beta names


def test_errors_name_the_number_and_field() -> None:
    doc = {
        "default": {"voice": "marin"},
        "numbers": {
            "+15551230001": {"voice": "robot"},
            "+15551230002": {"turn_detection": {"type": "server_vad", "threshold": 7}},
            "5551230003": {},
            "+15551230004": {"colour": "blue"},
        },
    }
    with pytest.raises(ConfigError) as err:
        parse_profiles(doc, source="test.yaml")
    text = str(err.value)
    assert "numbers.+15551230001.voice" in text
    assert "threshold" in text and "+15551230002" in text
    assert "5551230003: not an E.164 number" in text
    assert "+15551230004.colour" in text


def test_bad_yaml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profiles(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_profiles(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown top-level"):
        parse_profiles({"defaults": {}}, source="x")


def test_store_keeps_old_profiles_when_reload_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    path.write_text(GOOD)
    store = ProfileStore(path)
    assert store.for_number("+15551230001").voice == "cedar"
    path.write_text(GOOD.replace("voice: cedar", "voice: nobody"))
    with pytest.raises(ConfigError):
        store.reload()
    assert store.for_number("+15551230001").voice == "cedar"
    assert store.failed_reloads == 1
    path.write_text(GOOD.replace("voice: cedar", "voice: sage"))
    store.reload()
    assert store.for_number("+15551230001").voice == "sage"
    assert store.reloads == 1


def test_store_without_file_uses_builtin_default() -> None:
    store = ProfileStore(None)
    assert store.current.source == "built-in default"
    assert not store.changed_on_disk()


def test_an_error_in_the_default_is_reported_once_not_under_every_number() -> None:
    data = {
        "default": {"voise": "ash"},
        "numbers": {"+15551230001": {"greeting": "hi"}, "+15551230002": {"colour": "red"}},
    }
    with pytest.raises(ConfigError) as err:
        parse_profiles(data, source="x")
    lines = str(err.value).splitlines()[1:]
    assert lines == [
        "  - default.voise: Extra inputs are not permitted",
        "  - numbers.+15551230002.colour: Extra inputs are not permitted",  # its own, still said
    ]


def test_a_g711_codec_declares_matching_session_formats_and_a_bad_one_is_named() -> None:
    profile = builtin_profiles().default
    assert "format" not in profile.session_config()["audio"]["input"]
    cfg = profile.session_config(codec="pcmu")
    assert cfg["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert cfg["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "marin"}
    with pytest.raises(ConfigError, match=r"numbers\.\+15551230001\.upstream_codec"):
        parse_profiles({"numbers": {"+15551230001": {"upstream_codec": "g729"}}}, source="t")
