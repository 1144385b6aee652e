from __future__ import annotations

import pytest

from reconciler.auth import CredentialsError, TokenAuth
from reconciler.cli.api import select_auth
from reconciler.iam import PasswordAuth
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


def test_half_a_pair_is_an_error_without_the_secret() -> None:
    with pytest.raises(CredentialsError) as caught:
        select_auth(None, {"HUAWEICLOUD_SDK_SK": "s3cr3t-sk-value-0001"})
    assert "HUAWEICLOUD_SDK_AK" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


PASSWORD = {"HUAWEICLOUD_SDK_USERNAME": "deployer", "HUAWEICLOUD_SDK_PASSWORD": "Pa55word!",
            "HUAWEICLOUD_SDK_DOMAIN_NAME": "acme"}


def test_password_is_the_last_automatic_choice() -> None:
    assert isinstance(select_auth(None, {"RECONCILER_TOKEN": "tok", **AKSK, **PASSWORD},
                                  region="cn-north-4"), TokenAuth)
    assert isinstance(select_auth(None, {**AKSK, **PASSWORD}, region="cn-north-4"), AkSkAuth)
    chosen = select_auth(None, PASSWORD, region="cn-north-4")
    assert isinstance(chosen, PasswordAuth)
    assert "https://iam.cn-north-4.myhuaweicloud.com" in repr(chosen)


def test_explicit_password_needs_its_variables_and_an_iam_endpoint() -> None:
    chosen = select_auth("password", {"RECONCILER_TOKEN": "tok", **AKSK, **PASSWORD},
                         iam_endpoint="http://127.0.0.1:8787")
    assert isinstance(chosen, PasswordAuth)
    with pytest.raises(CredentialsError, match="auth: password needs HUAWEICLOUD_SDK_USERNAME"):
        select_auth("password", {"RECONCILER_TOKEN": "tok", **AKSK}, region="cn-north-4")
    with pytest.raises(CredentialsError, match="needs the IAM endpoint"):
        select_auth("password", PASSWORD)


def test_a_partial_set_matters_only_when_the_search_reaches_it() -> None:
    half_pair = {"HUAWEICLOUD_SDK_SK": "s3cr3t-sk-value-0001"}
    assert isinstance(select_auth(None, {"RECONCILER_TOKEN": "tok", **half_pair}), TokenAuth)
    with pytest.raises(CredentialsError, match="HUAWEICLOUD_SDK_AK"):  # reached before password
        select_auth(None, {**half_pair, **PASSWORD}, region="cn-north-4")
    with pytest.raises(CredentialsError, match="HUAWEICLOUD_SDK_DOMAIN_NAME") as caught:
        select_auth(None, {"HUAWEICLOUD_SDK_USERNAME": "u", "HUAWEICLOUD_SDK_PASSWORD": "pw-x"})
    assert "pw-x" not in str(caught.value)


def test_nothing_set_names_all_three_options() -> None:
    with pytest.raises(CredentialsError) as caught:
        select_auth(None, {})
    assert "RECONCILER_TOKEN" in str(caught.value)
    assert "HUAWEICLOUD_SDK_SK" in str(caught.value)
    assert "HUAWEICLOUD_SDK_USERNAME" in str(caught.value)
    assert "HUAWEICLOUD_SDK_DOMAIN_NAME" in str(caught.value)


def test_every_method_says_what_to_check_when_refused() -> None:
    for method, environ, variable in (("token", {"RECONCILER_TOKEN": "t0k-9"}, "RECONCILER_TOKEN"),
                                      ("aksk", AKSK, "HUAWEICLOUD_SDK_SK"),
                                      ("password", PASSWORD, "HUAWEICLOUD_SDK_USERNAME")):
        hint = select_auth(method, environ, region="cn-north-4").refused_hint
        assert variable in hint
        assert not any(value in hint for value in environ.values())
