"""`clarion.config.load`: settings from `CLARION_*` variables, checked once at start-up.

Each test passes an explicit environment, so nothing here depends on the shell that runs pytest.
A bad setting must surface as a `ConfigError` whose message names the variable — the CLI shows
that message as the process's one line of output.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from clarion.config import ConfigError, load
from clarion.vault import is_valid_key, new_key


def test_defaults_put_sqlite_under_the_data_dir_and_listen_on_8080(tmp_path: Path) -> None:
    settings = load({"CLARION_DATA_DIR": str(tmp_path)})

    assert settings.database_url == f"sqlite:///{tmp_path / 'clarion.db'}"
    assert settings.port == 8080
    assert settings.host == "127.0.0.1"
    assert settings.data_dir == tmp_path


def test_an_empty_database_url_means_the_default(tmp_path: Path) -> None:
    settings = load({"CLARION_DATA_DIR": str(tmp_path), "CLARION_DATABASE_URL": ""})

    assert settings.database_url == f"sqlite:///{tmp_path / 'clarion.db'}"


def test_host_port_and_database_url_are_taken_from_the_environment(tmp_path: Path) -> None:
    settings = load(
        {
            "CLARION_DATA_DIR": str(tmp_path),
            "CLARION_DATABASE_URL": "postgresql://clarion:pw@db.internal:5432/clarion",
            "CLARION_HOST": "10.0.0.5",
            "CLARION_PORT": "9000",
        }
    )

    assert settings.database_url == "postgresql://clarion:pw@db.internal:5432/clarion"
    assert settings.host == "10.0.0.5"
    assert settings.port == 9000


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/clarion/clarion.db",
        "sqlite+aiosqlite:///x.db",
        "postgres://u@h/db",
        "postgresql+asyncpg://u@h/db",
    ],
)
def test_supported_database_url_schemes_are_accepted(tmp_path: Path, url: str) -> None:
    settings = load({"CLARION_DATA_DIR": str(tmp_path), "CLARION_DATABASE_URL": url})

    assert settings.database_url == url


def test_secret_key_is_generated_under_the_data_dir_readable_only_by_the_owner(
    tmp_path: Path,
) -> None:
    settings = load({"CLARION_DATA_DIR": str(tmp_path)})

    path = tmp_path / "secret.key"
    assert path.read_text().strip() == settings.secret_key
    assert is_valid_key(settings.secret_key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_generated_secret_key_is_reused_on_the_next_start(tmp_path: Path) -> None:
    """A new key at every start would make every sealed auth token unreadable."""
    first = load({"CLARION_DATA_DIR": str(tmp_path)})
    second = load({"CLARION_DATA_DIR": str(tmp_path)})

    assert second.secret_key == first.secret_key


def test_a_missing_data_dir_is_created_for_the_secret_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"

    settings = load({"CLARION_DATA_DIR": str(data_dir)})

    assert (data_dir / "secret.key").read_text().strip() == settings.secret_key


def test_an_explicit_secret_key_is_used_and_nothing_is_written(tmp_path: Path) -> None:
    key = new_key()

    settings = load({"CLARION_DATA_DIR": str(tmp_path), "CLARION_SECRET_KEY": key})

    assert settings.secret_key == key
    assert not (tmp_path / "secret.key").exists()


@pytest.mark.parametrize("key", ["", "short", "x" * 44, "not base64 at all!!", "é" * 44])
def test_an_invalid_secret_key_is_a_config_error_naming_the_variable(
    tmp_path: Path, key: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load({"CLARION_DATA_DIR": str(tmp_path), "CLARION_SECRET_KEY": key})

    message = str(raised.value)
    assert "CLARION_SECRET_KEY" in message
    assert "32 url-safe base64-encoded bytes" in message
    assert "\n" not in message


def test_an_invalid_secret_key_is_not_echoed(tmp_path: Path) -> None:
    """The operator's (mistyped) secret must not end up in logs."""
    key = "my-almost-secret-key-value"

    with pytest.raises(ConfigError) as raised:
        load({"CLARION_DATA_DIR": str(tmp_path), "CLARION_SECRET_KEY": key})

    assert key not in str(raised.value)


def test_a_corrupted_secret_key_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    """Replacing it silently would lock out every existing account."""
    path = tmp_path / "secret.key"
    path.write_text("garbage\n")

    with pytest.raises(ConfigError) as raised:
        load({"CLARION_DATA_DIR": str(tmp_path)})

    assert str(path) in str(raised.value)
    assert "CLARION_SECRET_KEY" in str(raised.value)
    assert path.read_text() == "garbage\n"


def test_an_unusable_data_dir_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    with pytest.raises(ConfigError) as raised:
        load({"CLARION_DATA_DIR": str(blocker / "data")})

    assert "cannot create" in str(raised.value)
    assert str(blocker / "data" / "secret.key") in str(raised.value)


@pytest.mark.parametrize("port", ["0", "65536", "-1", "abc", "", "80.5", " 80", "99999999999"])
def test_a_bad_port_is_a_config_error_naming_the_variable(tmp_path: Path, port: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load({"CLARION_DATA_DIR": str(tmp_path), "CLARION_PORT": port})

    assert "CLARION_PORT" in str(raised.value)
    assert repr(port) in str(raised.value)


@pytest.mark.parametrize("port", ["1", "65535"])
def test_ports_at_the_ends_of_the_range_are_accepted(tmp_path: Path, port: str) -> None:
    assert load({"CLARION_DATA_DIR": str(tmp_path), "CLARION_PORT": port}).port == int(port)


@pytest.mark.parametrize(
    "url",
    ["mysql://root:hunter2@db/clarion", "mongodb://db", "/var/lib/clarion.db", "sqlite3:///x.db"],
)
def test_an_unknown_database_url_scheme_is_a_config_error(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load({"CLARION_DATA_DIR": str(tmp_path), "CLARION_DATABASE_URL": url})

    message = str(raised.value)
    assert "CLARION_DATABASE_URL" in message
    assert "sqlite:///" in message
    assert "postgresql://" in message
    assert "hunter2" not in message


def test_settings_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    """A bad setting elsewhere must not leave a fresh secret key behind."""
    with pytest.raises(ConfigError):
        load({"CLARION_DATA_DIR": str(tmp_path), "CLARION_PORT": "nope"})

    assert not (tmp_path / "secret.key").exists()


def test_public_url_defaults_to_none_and_loses_a_trailing_slash(tmp_path: Path) -> None:
    assert load({"CLARION_DATA_DIR": str(tmp_path)}).public_url is None
    settings = load(
        {"CLARION_DATA_DIR": str(tmp_path), "CLARION_PUBLIC_URL": "https://notify.example.com/"}
    )
    assert settings.public_url == "https://notify.example.com"


@pytest.mark.parametrize("url", ["notify.example.com", "ftp://notify.example.com", "https://"])
def test_a_bad_public_url_is_a_config_error_naming_the_variable(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load({"CLARION_DATA_DIR": str(tmp_path), "CLARION_PUBLIC_URL": url})

    assert "CLARION_PUBLIC_URL" in str(raised.value)


def test_lease_seconds_defaults_to_a_minute_and_can_be_shortened(tmp_path: Path) -> None:
    assert load({"CLARION_DATA_DIR": str(tmp_path)}).lease_seconds == 60
    shorter = load({"CLARION_DATA_DIR": str(tmp_path), "CLARION_LEASE_SECONDS": "5"})
    assert shorter.lease_seconds == 5


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_a_bad_lease_is_a_config_error_naming_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load({"CLARION_DATA_DIR": str(tmp_path), "CLARION_LEASE_SECONDS": value})

    assert "CLARION_LEASE_SECONDS" in str(raised.value)
