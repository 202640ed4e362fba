"""disable-account: expire the account, lock its password, end its sessions and processes; undo
restores exactly what was there before.

OSSEC's and Wazuh's disable-account run ``passwd -l``, which leaves SSH-key logins and live
sessions working. Here the account is expired (``usermod --expiredate 1``: PAM's account stage
refuses every login method, keys included), its password locked (``usermod -L``), and every
process running as it is ended (``loginctl terminate-user`` where systemd runs, then SIGKILL to
whatever is left with that real or effective uid). The previous expiry date and whether the
password was already locked are read from /etc/shadow and returned as the State, so ``delete``
puts back exactly that: the old expiry (or none) and an unlock only if add() did the locking.

Refused: root and any UID 0 alias, UIDs below ``min_uid`` (system accounts) or above ``max_uid``
(``nobody``), names in ``protected`` (and any alias sharing their UID), unknown users, and
accounts with no /etc/shadow entry (directory accounts: disable those in the directory).

``active()``: the accounts whose expiry is day 1 (1970-01-02) *and* whose password is locked,
the mark this responder leaves; an administrator does not set that combination by hand.
"""

from __future__ import annotations

import os
import pwd
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import psutil
from pydantic import BaseModel, ConfigDict, Field

from dfir_ar import procs
from dfir_ar.errors import ExecutionError, InvalidUsername, Refused, StateError
from dfir_ar.responder import Arg, Request, Responder, State
from dfir_ar.validate import parse_username

SHADOW = Path("/etc/shadow")
EXPIRED_DAY = 1
"""``--expiredate 1``: the account expired on 1970-01-02, i.e. long ago (0 means "never" to some
tools, so 1 is the earliest unambiguous date)."""
TOOL_TIMEOUT = 30.0
KILL_ROUNDS = 5


class DisableAccountOptions(BaseModel):
    """``[responders.disable-account]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_uid: int = Field(default=1000, ge=1)
    """Accounts below this UID are system accounts and are never disabled (login.defs UID_MIN)."""
    max_uid: int = Field(default=60000, ge=1)
    """Accounts above this UID (``nobody`` is 65534) are never disabled (login.defs UID_MAX)."""
    protected: tuple[str, ...] = ()
    """Account names never disabled (break-glass admins, service accounts with a high UID)."""
    end_sessions: bool = True
    """End the account's sessions and kill its processes after locking it."""


@dataclass(frozen=True, slots=True)
class ShadowEntry:
    name: str
    password_locked: bool
    expire: int | None
    """Days since the epoch, or None for "never"."""
    password_empty: bool = False
    """No password at all (``passwd -d``): ``usermod -U`` refuses to restore that, ``-p ''`` does."""


def parse_shadow(text: str) -> Iterator[ShadowEntry]:
    """Entries of an /etc/shadow text (name:pw:lastchg:min:max:warn:inactive:expire:reserved)."""
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 8 or not fields[0] or line.startswith(("#", "+", "-")):
            continue
        expire = fields[7].strip()
        yield ShadowEntry(
            name=fields[0],
            # usermod -L / passwd -l prefix '!'; a bare '!' or '!*' is locked too.
            password_locked=fields[1].startswith("!"),
            password_empty=fields[1] == "",
            expire=int(expire) if expire.lstrip("-").isdigit() and int(expire) >= 0 else None,
        )


def read_shadow_entry(name: str, path: Path = SHADOW) -> ShadowEntry | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ExecutionError(f"cannot read {path}: {exc.strerror or exc} (run as root)") from None
    for entry in parse_shadow(text):
        if entry.name == name:
            return entry
    return None


def check_disable_allowed(
    name: str,
    uid: int,
    *,
    min_uid: int,
    max_uid: int,
    protected: Iterable[str],
    protected_uids: Iterable[int] = (),
) -> None:
    """The policy, pure: raise Refused naming the reason, or return if ``name`` may be disabled."""
    if name == "root":
        raise Refused("disable-account: refusing to disable root")
    if uid == 0:
        raise Refused(f"disable-account: {name!r} has UID 0 (an alias of root); refused")
    if name in set(protected):
        raise Refused(f"disable-account: {name!r} is in [responders.disable-account] protected; refused")
    if uid in set(protected_uids):
        raise Refused(f"disable-account: {name!r} shares UID {uid} with a protected account; refused")
    if uid < min_uid:
        raise Refused(
            f"disable-account: {name!r} has UID {uid}, below min_uid {min_uid} (a system account); refused"
        )
    if uid > max_uid:
        raise Refused(
            f"disable-account: {name!r} has UID {uid}, above max_uid {max_uid} (nobody and similar); refused"
        )


def systemd_running() -> bool:
    """sd_booted(): systemd is PID 1 exactly when /run/systemd/system exists."""
    return Path("/run/systemd/system").is_dir()


def kill_user_processes(uid: int, rounds: int = KILL_ROUNDS) -> int:
    """SIGKILL every process whose real or effective uid is ``uid`` (``pkill -KILL -U/-u``).

    Several rounds, because a shell can fork between listing and killing. Never uid 0 and never
    this process.
    """
    if uid == 0:
        raise Refused("refusing to kill UID 0 processes")
    me = os.getpid()
    killed = 0
    for _ in range(rounds):
        victims: list[psutil.Process] = []
        for proc in psutil.process_iter(["pid", "uids"]):
            uids = proc.info.get("uids")
            if proc.pid == me or uids is None:
                continue
            if uid in (uids.real, uids.effective):
                victims.append(proc)
        if not victims:
            break
        for proc in victims:
            try:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        _wait_dead(victims, timeout=1.0)
    return killed


def _wait_dead(victims: list[psutil.Process], timeout: float) -> None:
    """Wait until every victim is gone or a zombie, without reaping: psutil.wait_procs would
    waitpid() children of this process and steal their exit status from their owner."""
    end = time.monotonic() + timeout
    pending = list(victims)
    while pending and time.monotonic() < end:
        alive = []
        for proc in pending:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                continue
        pending = alive
        if pending:
            time.sleep(0.02)


class DisableAccount(Responder):
    """Expire and lock a local account and end its sessions; the undo restores its old state."""

    name: ClassVar[str] = "disable-account"
    expects: ClassVar[tuple[Arg, ...]] = (Arg.USERNAME,)
    supports_timeout: ClassVar[bool] = True
    version: ClassVar[str] = "1"
    Options: ClassVar[type[BaseModel]] = DisableAccountOptions

    @classmethod
    def check_compatible(cls) -> None:
        from shutil import which

        from dfir_ar.errors import PluginUnavailable

        if which("usermod", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            raise PluginUnavailable("usermod is missing", hint="apt-get install passwd")

    @property
    def opts(self) -> DisableAccountOptions:
        assert isinstance(self.options, DisableAccountOptions)
        return self.options

    def key(self, request: Request) -> str:
        if request.target.username is None:
            raise InvalidUsername("disable-account needs a username (alert data.dstuser)")
        return parse_username(request.target.username)

    def _account(self, request: Request) -> pwd.struct_passwd:
        name = self.key(request)
        try:
            account = pwd.getpwnam(name)
        except KeyError:
            raise InvalidUsername(f"disable-account: no account named {name!r}") from None
        protected_uids = []
        for other in self.opts.protected:
            try:
                protected_uids.append(pwd.getpwnam(other).pw_uid)
            except KeyError:
                continue
        check_disable_allowed(
            account.pw_name,
            account.pw_uid,
            min_uid=self.opts.min_uid,
            max_uid=self.opts.max_uid,
            protected=self.opts.protected,
            protected_uids=protected_uids,
        )
        return account

    def add(self, request: Request) -> State:
        account = self._account(request)
        name = account.pw_name
        before = read_shadow_entry(name, SHADOW)
        if before is None:
            raise Refused(
                f"disable-account: {name!r} has no entry in {SHADOW} (not a local "
                "account); disable it in its directory service"
            )
        if before.expire == EXPIRED_DAY and before.password_locked:
            self.context.log.warning(
                "disable-account: %s already carries dfir-ar's mark (expired day 1, locked); an "
                "earlier state was lost, so the undo will leave it disabled",
                name,
            )
        # One usermod: it rewrites /etc/shadow once, under its own lock, so both changes land
        # together or not at all.
        lock = () if before.password_locked else ("-L",)
        _usermod("--expiredate", str(EXPIRED_DAY), *lock, name)
        state: State = {
            "username": name,
            "uid": account.pw_uid,
            "previous_expire": before.expire,
            "previous_locked": before.password_locked,
            "previous_password_empty": before.password_empty,
            "sessions_terminated": False,
            "killed": 0,
        }
        if self.opts.end_sessions:
            state["sessions_terminated"] = self._terminate_sessions(name)
            state["killed"] = kill_user_processes(account.pw_uid)
        self.context.log.info(
            "disable-account: %s expired and locked; %d process(es) killed", name, state["killed"]
        )
        return state

    def _terminate_sessions(self, name: str) -> bool:
        if not systemd_running():
            return False
        done = procs.run(["loginctl", "terminate-user", "--", name], timeout=TOOL_TIMEOUT)
        if done.returncode != 0:
            # No session is not a failure; the kill below still ends every process.
            self.context.log.info(
                "disable-account: loginctl terminate-user %s: %s",
                name,
                done.stderr.decode("utf-8", "replace").strip(),
            )
            return False
        return True

    def delete(self, request: Request, state: State) -> None:
        name = str(state.get("username") or self.key(request))
        parse_username(name)
        if "previous_locked" not in state or "previous_expire" not in state:
            raise StateError(
                f"disable-account: no saved previous state for {name!r}; it stays disabled. "
                f"Restore by hand: usermod --expiredate '' -U {name}"
            )
        try:
            pwd.getpwnam(name)
        except KeyError:
            self.context.log.info("disable-account: %s no longer exists; nothing to undo", name)
            return
        now = read_shadow_entry(name, SHADOW)
        if now is None:
            return
        previous_expire = state["previous_expire"]
        if previous_expire is not None and not isinstance(previous_expire, int):
            raise StateError(f"disable-account: saved expiry {previous_expire!r} is not a day")
        # Only undo what is still ours: an admin who changed the account meanwhile wins.
        options: list[str] = []
        if now.expire == EXPIRED_DAY:
            options += ["--expiredate", _expiry_arg(previous_expire)]
        else:
            self.context.log.warning(
                "disable-account: %s expiry was changed since it was disabled; left as is", name
            )
        if not state["previous_locked"] and now.password_locked:
            if state.get("previous_password_empty"):
                # usermod -U will not produce a passwordless account; put the empty field back.
                options += ["-p", ""]
            else:
                options += ["-U"]
        if options:
            _usermod(*options, name)
        self.context.log.info("disable-account: %s restored", name)

    def active(self) -> set[str] | None:
        try:
            text = SHADOW.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        found: set[str] = set()
        for entry in parse_shadow(text):
            if entry.expire != EXPIRED_DAY or not entry.password_locked:
                continue
            try:
                uid = pwd.getpwnam(entry.name).pw_uid
            except KeyError:
                continue
            if self.opts.min_uid <= uid <= self.opts.max_uid:
                found.add(entry.name)
        return found


def _expiry_arg(days: int | None) -> str:
    """usermod takes days since the epoch as a number; '' removes the expiry."""
    return "" if days is None else str(days)


def _usermod(*args: str) -> None:
    # "--" ends options: the name was validated already, this is a second fence.
    *options, name = args
    procs.run(["usermod", *options, "--", name], timeout=TOOL_TIMEOUT, check=True)
