"""disable-account against a real local user, checked through PAM (pamtester): login refused
after add, allowed after delete, the exact previous /etc/shadow state restored, live processes
killed, and every refusal (root, UID 0 alias, system UIDs, protected, unknown)."""

from __future__ import annotations

import json
import subprocess

import pytest

from dfir_ar.errors import InvalidUsername, Refused, StateError
from dfir_ar.responder import Request, Target
from responders.disable_account import (
    EXPIRED_DAY,
    check_disable_allowed,
    parse_shadow,
)
from tests.accounts.conftest import (
    TestUser,
    can_log_in,
    create_user,
    delete_user,
    pam,
    request,
    responder,
    shadow_line,
)


def roundtrip(state: dict[str, object]) -> dict[str, object]:
    """What the ledger does: the state goes through JSON in SQLite."""
    return json.loads(json.dumps(state))  # type: ignore[no-any-return]


def test_login_refused_after_add_and_allowed_after_delete(test_user: TestUser) -> None:
    assert can_log_in(test_user)
    before = shadow_line(test_user.name)
    disable = responder()
    state = disable.add(request(test_user.name))
    assert not pam(test_user.name, "authenticate", test_user.password), "password still works"
    # acct_mgmt is what also stops SSH-key logins (sshd runs the account stage for every method).
    assert not pam(test_user.name, "acct_mgmt"), "expired account still passes account checks"
    fields = shadow_line(test_user.name).split(":")
    assert fields[1].startswith("!") and fields[7] == str(EXPIRED_DAY)
    assert state["previous_expire"] is None and state["previous_locked"] is False
    assert disable.active() is not None and test_user.name in (disable.active() or set())

    disable.delete(request(test_user.name), roundtrip(state))
    assert can_log_in(test_user)
    assert shadow_line(test_user.name) == before
    assert test_user.name not in (disable.active() or set())


def test_previous_lock_and_expiry_restored_exactly(test_user: TestUser) -> None:
    subprocess.run(["usermod", "--expiredate", "30000", "-L", test_user.name], check=True)
    before = shadow_line(test_user.name)
    disable = responder()
    state = disable.add(request(test_user.name))
    assert state["previous_expire"] == 30000 and state["previous_locked"] is True
    assert shadow_line(test_user.name).split(":")[7] == str(EXPIRED_DAY)
    disable.delete(request(test_user.name), roundtrip(state))
    # Still locked (it was before), expiry back to day 30000, byte for byte the same line.
    assert shadow_line(test_user.name) == before
    assert not pam(test_user.name, "authenticate", test_user.password)


def test_passwordless_account_restored_exactly(test_user: TestUser) -> None:
    subprocess.run(["passwd", "--delete", test_user.name], check=True, capture_output=True)
    before = shadow_line(test_user.name)
    assert before.split(":")[1] == ""
    disable = responder()
    state = disable.add(request(test_user.name))
    assert shadow_line(test_user.name).split(":")[1].startswith("!")
    disable.delete(request(test_user.name), roundtrip(state))
    assert shadow_line(test_user.name) == before


def test_live_process_of_the_user_is_killed(test_user: TestUser) -> None:
    victim = subprocess.Popen(
        ["sleep", "120"], user=test_user.uid, group=test_user.gid, start_new_session=True
    )
    bystander = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        state = responder().add(request(test_user.name))
        assert victim.wait(timeout=5) == -9
        assert state["killed"] >= 1
        assert bystander.poll() is None, "a root process was killed"
        responder().delete(request(test_user.name), roundtrip(state))
    finally:
        for proc in (victim, bystander):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)


def test_admin_change_between_add_and_delete_wins(test_user: TestUser) -> None:
    disable = responder()
    state = disable.add(request(test_user.name))
    # The admin decides the account should expire on a fixed day after all.
    subprocess.run(["usermod", "--expiredate", "25000", test_user.name], check=True)
    disable.delete(request(test_user.name), roundtrip(state))
    assert shadow_line(test_user.name).split(":")[7] == "25000"
    assert pam(test_user.name, "authenticate", test_user.password)


def test_root_and_system_accounts_refused() -> None:
    disable = responder()
    with pytest.raises(Refused, match="root"):
        disable.add(request("root"))
    with pytest.raises(Refused, match="below min_uid 1000"):
        disable.add(request("daemon"))
    with pytest.raises(Refused, match="above max_uid"):
        disable.add(request("nobody"))


def test_unknown_and_malformed_users_refused() -> None:
    disable = responder()
    with pytest.raises(InvalidUsername, match="no account named"):
        disable.add(request("dfirnosuchuser"))
    for bad in ("-rf", "a b", "../etc", "x;reboot"):
        with pytest.raises(InvalidUsername):
            disable.add(request(bad))
    with pytest.raises(InvalidUsername, match="needs a username"):
        disable.add(Request(command="disable-account", target=Target()))


def test_protected_and_min_uid_options(test_user: TestUser) -> None:
    before = shadow_line(test_user.name)
    with pytest.raises(Refused, match="protected"):
        responder(protected=[test_user.name]).add(request(test_user.name))
    with pytest.raises(Refused, match="below min_uid"):
        responder(min_uid=test_user.uid + 1).add(request(test_user.name))
    assert shadow_line(test_user.name) == before
    assert can_log_in(test_user)


def test_alias_of_a_protected_account_refused(test_user: TestUser) -> None:
    alias = f"{test_user.name}a"
    create_user(alias, "--non-unique", "--uid", str(test_user.uid))
    try:
        with pytest.raises(Refused, match="shares UID"):
            responder(protected=[test_user.name]).add(request(alias))
    finally:
        delete_user(alias)


def test_uid0_alias_refused_by_policy() -> None:
    # Creating a real UID 0 alias is not something a test should do to a host; the policy is pure.
    with pytest.raises(Refused, match="UID 0"):
        check_disable_allowed("toor", 0, min_uid=1000, max_uid=60000, protected=())
    check_disable_allowed("alice", 1001, min_uid=1000, max_uid=60000, protected=())


def test_delete_without_state_keeps_account_disabled(test_user: TestUser) -> None:
    disable = responder()
    state = disable.add(request(test_user.name))
    with pytest.raises(StateError, match="stays disabled"):
        disable.delete(request(test_user.name), {})
    disable.delete(request(test_user.name), roundtrip(state))
    assert can_log_in(test_user)


def test_delete_after_user_removed_is_quiet(test_user: TestUser) -> None:
    disable = responder()
    state = disable.add(request(test_user.name))
    delete_user(test_user.name)
    disable.delete(request(test_user.name), roundtrip(state))


def test_parse_shadow() -> None:
    text = (
        "root:*:19000:0:99999:7:::\n"
        "alice:!$y$abc:19000:0:99999:7::1:\n"
        "bob:$y$def:19000:0:99999:7::20000:\n"
        "# comment\n"
        "short:line\n"
    )
    entries = {e.name: e for e in parse_shadow(text)}
    assert set(entries) == {"root", "alice", "bob"}
    assert entries["alice"].password_locked and entries["alice"].expire == 1
    assert not entries["bob"].password_locked and entries["bob"].expire == 20000
    assert entries["root"].expire is None


def test_reconcile_readds_a_lifted_block(test_user: TestUser) -> None:
    from dfir_ar.responder import LiveEntry

    disable = responder()
    req = request(test_user.name)
    state = disable.add(req)
    # Someone unlocks by hand while dfir-ar is down; reconcile puts the block back.
    subprocess.run(["usermod", "--expiredate", "", "-U", test_user.name], check=True)
    assert test_user.name not in (disable.active() or set())
    report = disable.reconcile([LiveEntry(request=req, state=state, remaining=300)])
    assert report.readded == 1
    assert not pam(test_user.name, "acct_mgmt")
    disable.delete(req, roundtrip(state))
    assert can_log_in(test_user)
