from __future__ import annotations

import pytest

from reconciler.auth import CredentialsError, TokenAuth
from reconciler.cli.api import select_auth
from reconciler.signer import AkSkAuth

AKSK = {"HUAWEICLOUD_SDK_AK": "HPUAEXAMPLEAK0001", "HUAWEICLOUD_SDK_SK": "s3cr3t-sk-value-0001"}


def test_token_is_preferred_when_both_are_set() -> None:
    assert isinstance(select_auth(None, {"RECONCILER_TOKEN": "tok", **AKSK}), TokenAuth)


def test_aksk_when_no_token() -> None:
    assert isinstance(select_auth(None, AKSK), AkSkAuth)


def test_explicit_method_wins() -> None:
    assert isinstance(select_auth("aksk", {"RECONCILER_TOKEN": "tok", **AKSK}), AkSkAuth)
    with pytest.raises(CredentialsError, match="HUAWEICLOUD_SDK_AK"):
        select_auth("aksk", {"RECONCILER_TOKEN": "tok"})
    with pytest.raises(CredentialsError, match="RECONCILER_TOKEN"):
        select_auth("token", AKSK)


def test_nothing_set_names_both_options() -> None:
    with pytest.raises(CredentialsError) as caught:
        select_auth(None, {})
    assert "RECONCILER_TOKEN" in str(caught.value)
    assert "HUAWEICLOUD_SDK_SK" in str(caught.value)


def test_half_a_pair_is_an_error_without_the_secret() -> None:
    with pytest.raises(CredentialsError) as caught:
        select_auth(None, {"HUAWEICLOUD_SDK_SK": "s3cr3t-sk-value-0001"})
    assert "HUAWEICLOUD_SDK_AK" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
