"""A ctypes binding to libnftables (the library behind the ``nft`` command), so a batch of set
updates is one in-process netlink transaction instead of one process per address.

Commands go in and come out as JSON (libnftables' stable interface, ``man libnftables-json``):
libnftables 1.0.x has no input-flag API, but it parses the buffer as JSON first whenever the JSON
*output* flag is set, which is how the binding selects JSON input. A context binds its netlink
socket to the network namespace of the thread that created it: build a ``LibNft`` in the
namespace it must act on.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import threading
from collections.abc import Sequence
from typing import Any

from dfir_ar.errors import ExecutionError, PluginUnavailable

# From <nftables/libnftables.h>; stable since libnftables 0.9.
_OUTPUT_HANDLE = 1 << 3
_OUTPUT_JSON = 1 << 4
_OUTPUT_TERSE = 1 << 11
_CTX_DEFAULT = 0

SONAME = "libnftables.so.1"

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def _load() -> ctypes.CDLL:
    """Load libnftables once per process and declare the few functions used."""
    global _lib  # noqa: PLW0603 - one shared handle to a C library
    with _lib_lock:
        if _lib is not None:
            return _lib
        try:
            lib = ctypes.CDLL(SONAME, use_errno=True)
        except OSError:
            found = ctypes.util.find_library("nftables")
            if found is None:
                raise PluginUnavailable(
                    f"{SONAME} is not installed",
                    hint="apt-get install nftables (or set backend = \"ipset\" / \"iptables\")",
                ) from None
            lib = ctypes.CDLL(found, use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.restype = None
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.restype = None
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.restype = ctypes.c_int
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.restype = ctypes.c_int
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        _lib = lib
        return lib


def available() -> bool:
    """True when libnftables can be loaded here (no context is created, nothing runs)."""
    try:
        _load()
    except PluginUnavailable:
        return False
    return True


class NftError(ExecutionError):
    """libnftables refused a batch; the message carries its error text."""


class LibNft:
    """One libnftables context. Thread-safe (a lock serialises commands on the context)."""

    def __init__(self) -> None:
        self._lib = _load()
        self._lock = threading.Lock()
        ctx = self._lib.nft_ctx_new(_CTX_DEFAULT)
        if not ctx:
            raise PluginUnavailable("libnftables could not create a context", hint="run as root")
        self._ctx: int | None = ctx
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None

    def __del__(self) -> None:
        # Interpreter shutdown may already have dropped the library; freeing is best effort.
        with contextlib.suppress(Exception):
            self.close()

    def run(self, commands: Sequence[dict[str, Any]], *, terse: bool = False) -> dict[str, Any]:
        """Run ``commands`` (libnftables-json command objects) as ONE atomic transaction.

        Returns the decoded JSON output (``{"nftables": [...]}``), or ``{}`` when a write-only batch
        printed nothing. Raises NftError with libnftables' message if the kernel refused any part
        (then none of it was applied).
        """
        payload = json.dumps({"nftables": list(commands)}, separators=(",", ":")).encode()
        flags = _OUTPUT_JSON | _OUTPUT_HANDLE | (_OUTPUT_TERSE if terse else 0)
        with self._lock:
            if self._ctx is None:
                raise NftError("libnftables context is closed")
            self._lib.nft_ctx_output_set_flags(self._ctx, flags)
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, payload)
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if rc != 0:
            text = err.decode("utf-8", "replace").strip() or f"libnftables returned {rc}"
            raise NftError(_first_lines(text))
        if not out.strip():
            return {}
        decoded = json.loads(out)
        if not isinstance(decoded, dict):
            raise NftError("libnftables printed JSON that is not an object")
        return decoded


def _first_lines(text: str, limit: int = 6) -> str:
    lines = text.splitlines()
    if len(lines) <= limit:
        return text
    return "\n".join([*lines[:limit], f"... ({len(lines) - limit} more lines)"])
