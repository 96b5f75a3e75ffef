from pathlib import Path

import pytest

from agent.core.config import AgentConfig, ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def test_repo_config_is_valid_and_needs_no_external_service():
    config = load_config(REPO / "config.toml", environ={})
    assert config.mqtt.url == "embedded"
    assert config.store_dir == REPO / "engines"
    (camera,) = config.cameras
    assert Path(camera.uri) == REPO / "demo" / "video.mp4"
    assert camera.name == "entrance" and camera.enabled


def test_defaults_name_the_hostname_as_device_id():
    import socket

    assert parse_config("", environ={}).agent.device_id == socket.gethostname()


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"mqtt\.urll: unknown key"):
        parse_config('[mqtt]\nurll = "mqtt://x"\n', environ={})


def test_bad_value_is_named_with_the_reason():
    with pytest.raises(ConfigError, match=r"mqtt\.url: .*'ftp://x' is not 'embedded'"):
        parse_config('[mqtt]\nurl = "ftp://x"\n', environ={})


def test_device_id_with_topic_characters_is_refused():
    with pytest.raises(ConfigError, match=r"agent\.device_id"):
        parse_config('[agent]\ndevice_id = "a/b"\n', environ={})


def test_broken_toml_is_reported():
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[agent\n", environ={})


def test_environment_overrides_the_file():
    config = parse_config(
        '[mqtt]\nurl = "embedded"\n',
        environ={"EDGE_AGENT__MQTT__URL": "mqtts://broker:8883", "EDGE_AGENT__MODEL__THREADS": "4"},
    )
    assert config.mqtt.url == "mqtts://broker:8883"
    assert config.model.threads == 4


def test_environment_override_of_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"model\.thread: unknown key"):
        parse_config("", environ={"EDGE_AGENT__MODEL__THREAD": "4"})


def test_malformed_override_name_is_refused():
    with pytest.raises(ConfigError, match="EDGE_AGENT__MODEL"):
        parse_config("", environ={"EDGE_AGENT__MODEL": "4"})


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_the_config_has_no_password_setting_and_says_where_it_goes():
    assert "password" not in AgentConfig.model_fields["mqtt"].annotation.model_fields
    with pytest.raises(ConfigError, match=r"mqtt: .*password: not a setting.*password_file"):
        parse_config('[mqtt]\nusername = "cam"\npassword = "secret"\n', environ={})


def test_credentials_in_the_broker_url_are_refused_without_echoing_them():
    with pytest.raises(ConfigError, match=r"mqtt\.url: .*holds credentials") as caught:
        parse_config('[mqtt]\nurl = "mqtts://cam:s3cret@broker:8883"\n', environ={})
    assert "s3cret" not in str(caught.value)


def test_outbox_and_command_signing_settings_have_defaults_and_bounds(tmp_path):
    config = parse_config("", environ={})
    assert (config.mqtt.outbox_max_messages, config.mqtt.outbox_max_age_s) == (10_000, 86_400.0)
    assert config.commands.public_key_file is None
    with pytest.raises(ConfigError, match=r"mqtt\.outbox_max_messages"):
        parse_config("[mqtt]\noutbox_max_messages = 0\n", environ={})
    with pytest.raises(ConfigError, match=r"commands\.max_clock_skew_s"):
        parse_config("[commands]\nmax_clock_skew_s = -1\n", environ={})
    path = tmp_path / "config.toml"
    path.write_text('[commands]\npublic_key_file = "keys/control.pem"\n')
    loaded = load_config(path, environ={})
    assert loaded.commands.public_key_file == tmp_path / "keys" / "control.pem"


def test_configuration_page_is_generated_from_the_code():
    from agent.dev.config_doc import render_markdown

    page = (REPO / "docs" / "configuration.md").read_text()
    assert page == render_markdown(), "run: python -m agent.cli.config_doc > docs/configuration.md"


def test_every_setting_has_a_meaning_in_the_docs():
    from agent.core.config import AgentConfig

    for name, section in AgentConfig.model_fields.items():
        model = section.annotation
        if getattr(model, "__origin__", None) is tuple:  # [[camera]]
            model = model.__args__[0]
        for key, field in model.model_fields.items():
            assert field.description or key == "device_id", f"[{name}] {key} has no docstring"


CAMERAS = """
[[camera]]
name = "entrance"
uri = "demo/video.mp4"
fps = 5.0

[[camera]]
name = "yard"
uri = "rtsp://cam-2.local/stream"
roi = [0, 0, 320, 240]
enabled = false
"""


def test_camera_entries_load_with_their_caps_regions_and_paths_from_the_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(CAMERAS)
    entrance, yard = load_config(path, environ={}).cameras
    assert (entrance.name, Path(entrance.uri), entrance.fps) == ("entrance", tmp_path / "demo" / "video.mp4", 5.0)
    assert (yard.uri, yard.roi, yard.enabled, yard.fps) == ("rtsp://cam-2.local/stream", (0, 0, 320, 240), False, None)


def test_the_single_source_form_still_loads_as_one_camera_named_by_its_name_and_is_deprecated():
    config = parse_config('[source]\nuri = "a.mp4"\nname = "door"\n', environ={})
    (camera,) = config.cameras
    assert (camera.name, camera.uri) == ("door", "a.mp4")
    assert config.uses_source_section and not parse_config(CAMERAS, environ={}).uses_source_section


@pytest.mark.parametrize(("patch", "error"), [
    ('uri = "ftp://cam-2.local/x"', r"camera\[1\] \(yard\)\.uri: .*scheme 'ftp' is not a camera transport"),
    ('uri = ""', r"camera\[1\] \(yard\)\.uri: "),
    ('fps = 0', r"camera\[1\] \(yard\)\.fps: "),
    ('roi = [0, 0, 0, 10]', r"camera\[1\] \(yard\)\.roi: .*width, height >= 1"),
    ('model = "other"', r"camera\[1\] \(yard\)\.model: 'other' is not served here"),
    ('colour = "red"', r"camera\[1\] \(yard\)\.colour: unknown key"),
])
def test_check_config_names_the_camera_and_the_key_that_is_wrong(patch, error):
    key = patch.split(" ")[0]
    line = next((x for x in CAMERAS.splitlines() if x.startswith(f"{key} ") and "rtsp" in x), None)
    text = CAMERAS.replace(line, patch) if line else CAMERAS.replace("roi = [0, 0, 320, 240]", patch)
    with pytest.raises(ConfigError, match=error):
        parse_config(text, environ={})


def test_a_camera_name_must_be_a_topic_segment_and_unique():
    with pytest.raises(ConfigError, match=r"camera\[1\] \(ya/rd\)\.name: .*must not contain '/'"):
        parse_config(CAMERAS.replace('"yard"', '"ya/rd"'), environ={})
    with pytest.raises(ConfigError, match=r"camera\[1\] \(entrance\)\.name: duplicate: camera\[0\]"):
        parse_config(CAMERAS.replace('"yard"', '"entrance"'), environ={})


def test_source_and_camera_entries_together_are_refused_with_the_way_out():
    with pytest.raises(ConfigError, match=r"\[source\] and \[\[camera\]\] together"):
        parse_config('[source]\nuri = "a.mp4"\n' + CAMERAS, environ={})
