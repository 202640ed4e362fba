"""A real local test user (``dfirtest<random>``, with a password) created for one test and always
deleted, plus PAM checks through pamtester, the way a login really is decided."""

from __future__ import annotations

import contextlib
import logging
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dfir_ar.responder import Request, ResponderContext, Target
from responders.disable_account import DisableAccount, kill_user_processes
from tests.conftest import require_root, require_tool

PASSWORD = "Corr3ct-Horse-Battery"


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # not a test class for pytest

    name: str
    uid: int
    gid: int
    password: str


def shadow_line(name: str) -> str:
    for line in Path("/etc/shadow").read_text().splitlines():
        if line.split(":", 1)[0] == name:
            return line
    raise AssertionError(f"{name} not in /etc/shadow")


def pam(user: str, action: str, password: str | None = None) -> bool:
    """True if PAM's ``login`` service allows ``action`` (authenticate / acct_mgmt) for ``user``."""
    done = subprocess.run(
        ["pamtester", "login", user, action],
        input=(password + "\n") if password is not None else "",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return done.returncode == 0


def can_log_in(user: TestUser) -> bool:
    """Both PAM stages a login passes: the password, then the account (expiry) check."""
    return pam(user.name, "authenticate", user.password) and pam(user.name, "acct_mgmt")


def create_user(name: str, *extra: str) -> TestUser:
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/bin/sh", *extra, name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    subprocess.run(["chpasswd"], input=f"{name}:{PASSWORD}\n", text=True, check=True, timeout=30)
    entry = pwd.getpwnam(name)
    return TestUser(name, entry.pw_uid, entry.pw_gid, PASSWORD)


def delete_user(name: str) -> None:
    with contextlib.suppress(KeyError):
        uid = pwd.getpwnam(name).pw_uid
        if uid >= 1000:
            kill_user_processes(uid)
    subprocess.run(["userdel", "--force", name], capture_output=True, timeout=30, check=False)


@pytest.fixture
def test_user() -> Iterator[TestUser]:
    require_root()
    require_tool("useradd", "usermod", "userdel", "chpasswd", "pamtester")
    name = f"dfirtest{secrets.randbelow(10**6)}"
    user = create_user(name)
    try:
        yield user
    finally:
        delete_user(name)
    assert name not in {p.pw_name for p in pwd.getpwall()}


def responder(**options: Any) -> DisableAccount:
    return DisableAccount(
        ResponderContext(
            state_dir=Path("/nonexistent"),
            options=options,
            log=logging.getLogger("test.disable_account"),
        )
    )


def request(name: str) -> Request:
    return Request(command="disable-account", target=Target(username=name), timeout=600)
