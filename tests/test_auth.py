"""The settings that choose and locate authentication: `auth` and `iam_endpoint`."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.config import ConfigError, Settings, load_settings
from reconciler.model import ReconcilerError


def settings_with(base: Path, text: str | None,
                  environ: dict[str, str] | None = None) -> Settings:
    """The settings of a directory holding `text` as its config file (none when None)."""
    base.mkdir(exist_ok=True)
    if text is not None:
        (base / "reconciler.yaml").write_text(text)
    return load_settings(base, None, environ or {})


def test_password_is_a_method_of_the_file_and_the_environment(tmp_path: Path) -> None:
    assert settings_with(tmp_path, "auth: password\n").auth == "password"
    assert settings_with(tmp_path / "bare", None, {"RECONCILER_AUTH": "password"}).auth == \
        "password"


def test_an_unknown_method_lists_the_three(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="auth must be one of token, aksk, password, got 'sso'"):
        settings_with(tmp_path, "auth: sso\n")
    with pytest.raises(ReconcilerError, match="RECONCILER_AUTH must be one of token, aksk, "
                                              "password"):
        settings_with(tmp_path / "bare", None, {"RECONCILER_AUTH": "sso"})


def test_iam_endpoint_precedence(tmp_path: Path) -> None:
    text = "iam_endpoint: https://iam.from-file.example\n"
    assert settings_with(tmp_path, text).iam_endpoint == "https://iam.from-file.example"
    sdk = {"HUAWEICLOUD_SDK_IAM_ENDPOINT": "https://iam.sdk.example"}
    assert settings_with(tmp_path, text, sdk).iam_endpoint == "https://iam.sdk.example"
    ours = {**sdk, "RECONCILER_IAM_ENDPOINT": "http://127.0.0.1:8787"}
    assert settings_with(tmp_path, text, ours).iam_endpoint == "http://127.0.0.1:8787"
    assert settings_with(tmp_path / "bare", None).iam_endpoint is None


def test_iam_endpoint_must_be_a_string(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"reconciler.yaml:1:\d+: iam_endpoint must be a "
                                          "string"):
        settings_with(tmp_path, "iam_endpoint: [a]\n")


def test_a_misspelt_key_suggests_iam_endpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'iam_endpoint'"):
        settings_with(tmp_path, "iam_endpiont: https://x\n")
