"""Settings come from flags, then AMI_* variables, then defaults; errors name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import Settings, SettingsError


def test_defaults_match_the_design() -> None:
    settings = Settings.load([], environ={})
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.ray_address is None
    assert settings.data_dir == Path("data")
    assert settings.euro_url == "https://www.euro-millions.com/results/"
    assert settings.allow_private_urls is False
    assert settings.enable_echo is False
    assert settings.max_frame_bytes == 64 * 1024


def test_environment_then_flags() -> None:
    env = {"AMI_PORT": "9000", "AMI_ENABLE_ECHO": "1", "RAY_ADDRESS": "head:6379", "AMI_ALLOW_PRIVATE_URLS": "1",
           "AMI_POOLS": "audio.length=3, echo=0"}
    settings = Settings.load([], environ=env)
    assert settings.port == 9000 and settings.enable_echo and settings.allow_private_urls
    assert settings.ray_address == "head:6379"
    assert settings.pool_bounds("audio.length", 1) == (3, 3)
    assert settings.pool_bounds("echo", 1) == (0, 0)
    assert settings.pool_bounds("euro.results", 2) == (2, 2)
    scaled = Settings.load([], environ={"AMI_POOLS": "echo=1..4", "AMI_POOL_TARGET_PER_ACTOR": "8"})
    assert scaled.pool_bounds("echo", 1) == (1, 4) and scaled.pool_target_per_actor == 8
    for wrong in ("echo=4..1", "echo=1..", "echo=-1..2"):
        with pytest.raises(SettingsError):
            Settings.load([], environ={"AMI_POOLS": wrong})
    flagged = Settings.load(["--port", "9100", "--no-enable-echo", "--host", "0.0.0.0"], environ=env)
    assert (flagged.port, flagged.enable_echo, flagged.host) == (9100, False, "0.0.0.0")


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"AMI_PORT": "eighty"}, "AMI_PORT"),
        ({"AMI_PORT": "70000"}, "AMI_PORT"),
        ({"AMI_ENABLE_ECHO": "maybe"}, "AMI_ENABLE_ECHO"),
        ({"AMI_STORE": "mysql://x"}, "AMI_STORE"),
        ({"AMI_POOLS": "audio.length=lots"}, "AMI_POOLS"),
        ({"AMI_EURO_URL": "ftp://x/"}, "AMI_EURO_URL"),
    ],
)
def test_bad_values_name_their_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.load([], environ=env)


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(SettingsError, match="--port"):
        Settings.load(["--port", "x"], environ={})


@pytest.mark.parametrize(("store", "shown"), [
    ("redis://:s3cret@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),
    ("redis://ami:s3cret@[::1]:6379/1", "redis://ami:***@[::1]:6379/1"),
    ("redis://10.0.0.5:6379/0", "redis://10.0.0.5:6379/0"),
    ("sqlite", "sqlite"),
])
def test_a_store_password_is_never_shown(store: str, shown: str) -> None:
    assert Settings.load(["--store", store], environ={}).store_shown == shown


def test_tokens_and_origins_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.load([], environ={"AMI_TOKENS": " a, b ,", "AMI_ALLOWED_ORIGINS": "*"})
    assert settings.tokens == ("a", "b") and settings.allowed_origins == ("*",)
    assert Settings.load([], environ={}).tokens == ()
