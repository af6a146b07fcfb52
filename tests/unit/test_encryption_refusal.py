"""walg refuses to touch storage while one of WAL-G's encryption settings is set.

It cannot encrypt yet; ignoring the setting would store a WAL-G user's backups and WAL in
clear. The real command is exercised in tests/integration/test_encryption_refusal.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from walg.errors import EXIT_CONFIG, ConfigError
from walg.settings import ENCRYPTION_KEYS, load

SECRET = "0123456789abcdef0123456789abcdef"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path), "WALG_FILE_PREFIX": str(tmp_path / "store"), **extra}


@pytest.mark.parametrize(
    "name",
    [
        "WALG_LIBSODIUM_KEY",
        "WALG_LIBSODIUM_KEY_PATH",
        "WALG_LIBSODIUM_KEY_TRANSFORM",
        "WALG_PGP_KEY",
        "WALG_PGP_KEY_PATH",
        "WALG_PGP_KEY_PASSPHRASE",
        "WALE_GPG_KEY_ID",
        "WALG_GPG_KEY_ID",
        "GPG_KEY_ID",
        "WALG_ENVELOPE_PGP_KEY",
        "WALG_CSE_KMS_ID",
        "WALG_CSE_KMS_REGION",
        "YC_CSE_KMS_KEY_ID",
        "WALG_S3_SSE",
        "GCS_ENCRYPTION_KEY",
    ],
)
def test_each_setting_is_refused_by_name_without_its_value(tmp_path: Path, name: str) -> None:
    settings = load(environ=_env(tmp_path, **{name: SECRET}))
    with pytest.raises(ConfigError) as info:
        settings.require_storage()
    assert info.value.exit_code == EXIT_CONFIG == 78
    message = str(info.value)
    assert name in message
    assert "encryption" in message and "not support" in message
    assert SECRET not in message


def test_a_setting_from_the_config_file_is_refused_too(tmp_path: Path) -> None:
    config = tmp_path / "walg.json"
    config.write_text(json.dumps({"WALG_PGP_KEY_PATH": "/etc/walg/key.asc"}))
    settings = load(environ=_env(tmp_path), config_path=str(config))
    with pytest.raises(ConfigError, match="WALG_PGP_KEY_PATH is set"):
        settings.require_storage()


def test_several_settings_are_all_named(tmp_path: Path) -> None:
    settings = load(
        environ=_env(tmp_path, WALG_LIBSODIUM_KEY=SECRET, WALG_LIBSODIUM_KEY_TRANSFORM="hex")
    )
    with pytest.raises(ConfigError, match="WALG_LIBSODIUM_KEY, WALG_LIBSODIUM_KEY_TRANSFORM are"):
        settings.require_storage()


def test_empty_values_and_commands_without_storage_are_not_refused(tmp_path: Path) -> None:
    settings = load(environ=_env(tmp_path, WALG_LIBSODIUM_KEY="", WALG_PGP_KEY="  "))
    assert settings.require_storage() == ("file", str(tmp_path / "store"))
    # Settings alone load fine: only touching storage is refused.
    load(environ=_env(tmp_path, WALG_LIBSODIUM_KEY=SECRET))


def test_the_list_covers_the_documented_names() -> None:
    for name in ("WALG_ENVELOPE_PGP_KEY_PATH", "YC_SERVICE_ACCOUNT_KEY_FILE", "WALE_S3_SSE"):
        assert name in ENCRYPTION_KEYS
