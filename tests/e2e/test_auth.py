"""`reconciler` with AK/SK signatures and IAM password tokens, against the emulator in a subprocess
that checks them."""

from __future__ import annotations

from tests.conftest import HEADER
from tests.e2e.conftest import Project, Result
from tests.e2e.emulator_proc import EmulatorProcess, emulator

AK, SK = "E2EAKEXAMPLE00000001", "e2e-secret-key-0123456789abcdef"
USER, PASSWORD, DOMAIN = "deployer", "e2e-Pa55word!", "acme-account"
IAM_OPTIONS = ("--iam-user", USER, "--iam-password", PASSWORD, "--iam-domain", DOMAIN)
ALL = 11  # the bundled example schedules


def run(project: Project, emu: EmulatorProcess, env: dict[str, str], *argv: str) -> Result:
    return project.run(*argv, env={"RECONCILER_ENDPOINT": emu.url, **env})


def assert_no_secret(result: Result, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in result.out
        assert secret not in result.err
    assert "Traceback" not in result.err


def test_aksk_signed_apply_and_refresh(project: Project) -> None:
    env = {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK}
    with emulator("--ak", AK, "--sk", SK) as emu:
        applied = run(project, emu, env, "apply", "--auto-approve")
        assert applied.code == 0, applied.err
        assert len(emu.dispatches()) == ALL
        plan = run(project, emu, {**env, "RECONCILER_AUTH": "aksk"}, "plan", "--refresh",
                   "--detailed-exitcode")
        assert plan.code == 0, plan.err
        assert_no_secret(applied, SK)


def test_a_wrong_sk_fails_clearly(project: Project) -> None:
    env = {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": "not-the-right-secret-key"}
    with emulator("--ak", AK, "--sk", SK) as emu:
        applied = run(project, emu, env, "apply", "--auto-approve")
        assert applied.code == 1
        assert ("HTTP 401 APIGW.0301: Incorrect IAM authentication information: verify aksk "
                "signature fail") in applied.err
        assert_no_secret(applied, "not-the-right-secret-key", SK)
        assert not emu.dispatches()
        plan = run(project, emu, env, "plan", "--refresh")
        assert plan.code == 1
        assert "verify aksk signature fail" in plan.err


def test_a_token_is_refused_by_an_emulator_that_wants_signatures(project: Project) -> None:
    with emulator("--ak", AK, "--sk", SK) as emu:
        applied = run(project, emu, {"RECONCILER_TOKEN": "some-token"}, "apply",
                      "--auto-approve")
        assert applied.code == 1
        assert "HTTP 401 APIGW.0301" in applied.err
        assert not emu.dispatches()


def password_env(emu: EmulatorProcess, password: str = PASSWORD) -> dict[str, str]:
    return {"RECONCILER_AUTH": "password", "RECONCILER_IAM_ENDPOINT": emu.url,
            "HUAWEICLOUD_SDK_USERNAME": USER, "HUAWEICLOUD_SDK_PASSWORD": password,
            "HUAWEICLOUD_SDK_DOMAIN_NAME": DOMAIN}


def test_password_apply_asks_iam_once_per_project(project: Project) -> None:
    (project.root / "schedules" / "second.yaml").write_text(
        HEADER + "  - name: in-another-project\n    task_id: t1\n    cron: \"0 0 3 * * ?\"\n")
    with emulator(*IAM_OPTIONS) as emu:
        applied = run(project, emu, password_env(emu), "apply", "--auto-approve")
        assert applied.code == 0, applied.err
        assert len(emu.dispatches()) == ALL + 1
        assert emu.iam() == {"issued": 2, "refused": 0}  # two projects, one token each
        plan = run(project, emu, password_env(emu), "plan", "--refresh", "--detailed-exitcode")
        assert plan.code == 0, plan.err
        assert_no_secret(applied, PASSWORD)


def test_password_is_chosen_automatically_when_alone(project: Project) -> None:
    with emulator(*IAM_OPTIONS) as emu:
        env = {k: v for k, v in password_env(emu).items() if k != "RECONCILER_AUTH"}
        applied = run(project, emu, env, "apply", "--auto-approve")
        assert applied.code == 0, applied.err
        assert emu.iam()["issued"] == 1


def test_a_wrong_password_fails_clearly_and_reaches_iam_once(project: Project) -> None:
    with emulator(*IAM_OPTIONS) as emu:
        applied = run(project, emu, password_env(emu, "guessed-password"), "apply",
                      "--auto-approve")
        assert applied.code == 1
        assert ("IAM refused a token for project 0b7a3e1c2d4f4a5b8c9d0e1f2a3b4c5d: HTTP 401: "
                "The username or password is wrong.") in applied.err
        assert "check HUAWEICLOUD_SDK_USERNAME, HUAWEICLOUD_SDK_PASSWORD" in applied.err
        assert_no_secret(applied, "guessed-password", PASSWORD)
        assert emu.iam() == {"issued": 0, "refused": 1}
        assert not emu.dispatches()
        plan = run(project, emu, password_env(emu, "guessed-password"), "plan", "--refresh")
        assert plan.code == 1
        assert plan.err.count("The username or password is wrong.") == 1


def test_password_without_its_settings(project: Project) -> None:
    with emulator(*IAM_OPTIONS) as emu:
        missing = run(project, emu, {"RECONCILER_AUTH": "password"}, "apply", "--auto-approve")
        assert missing.code == 1
        assert missing.err == ("error: auth: password needs HUAWEICLOUD_SDK_USERNAME, "
                               "HUAWEICLOUD_SDK_PASSWORD and HUAWEICLOUD_SDK_DOMAIN_NAME in the "
                               "environment\n")
        env = {k: v for k, v in password_env(emu).items() if k != "RECONCILER_IAM_ENDPOINT"}
        no_iam = run(project, emu, env, "apply", "--auto-approve")
        assert no_iam.code == 1
        assert "auth: password needs the IAM endpoint" in no_iam.err
        insecure = run(project, emu, {**env, "RECONCILER_IAM_ENDPOINT": "http://iam.example.com"},
                       "apply", "--auto-approve")
        assert insecure.code == 1
        assert "https is required" in insecure.err
        assert_no_secret(insecure, PASSWORD)
        assert not emu.dispatches()
