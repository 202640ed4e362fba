"""The dfir-ar exception tree. Exit codes live on the classes so the CLI maps them in one place.

    DfirArError (exit 1)
    ├── ConfigError (exit 2)            a config file is wrong; message names file, block, key, fix
    ├── UsageError (exit 2)             a command-line value is wrong
    ├── RefusedInput (exit 3)           an attacker-controllable value failed validation
    │   ├── InvalidAddress
    │   ├── InvalidUsername
    │   └── InvalidArgument
    ├── Refused (exit 3)                a safety rail said no (white list, cap, rate limit)
    ├── PluginUnavailable (exit 4)      a plug-in's dependency or tool is missing; carries a hint
    ├── ExecutionError (exit 5)         a responder/collector/subprocess failed
    │   └── DeadlineExceeded            ... or ran past its deadline and was killed
    ├── StateError (exit 6)             the ledger or spool is unusable
    ├── EvidenceError (exit 7)          a bundle failed to build, verify, upload or download
    │   ├── VerificationFailed
    │   └── StoreError
    └── TransportError (exit 8)         the control socket or broker failed
"""

from __future__ import annotations


class DfirArError(Exception):
    """Base of every error dfir-ar raises on purpose."""

    exit_code: int = 1


class ConfigError(DfirArError):
    exit_code = 2


class UsageError(DfirArError):
    exit_code = 2


class RefusedInput(DfirArError):
    """An alert or order field did not parse; nothing runs."""

    exit_code = 3


class InvalidAddress(RefusedInput):
    pass


class InvalidUsername(RefusedInput):
    pass


class InvalidArgument(RefusedInput):
    pass


class Refused(DfirArError):
    """A safety rail refused an order that parsed fine."""

    exit_code = 3


class PluginUnavailable(DfirArError):
    """A plug-in cannot run here; ``hint`` says what to install or configure."""

    exit_code = 4

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (hint: {self.hint})" if self.hint else base


class ExecutionError(DfirArError):
    exit_code = 5


class DeadlineExceeded(ExecutionError):
    pass


class StateError(DfirArError):
    exit_code = 6


class EvidenceError(DfirArError):
    exit_code = 7


class VerificationFailed(EvidenceError):
    pass


class StoreError(EvidenceError):
    pass


class TransportError(DfirArError):
    exit_code = 8
