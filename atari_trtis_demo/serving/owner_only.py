"""Make what Triton creates its user's alone: a umask of 077, and no ``fchmod`` that widens it again.

Triton's python backend creates each model instance's ``/dev/shm`` region (every player's
frames and Q-values pass through it) through boost.interprocess, which opens it with mode
0644 and then calls ``fchmod(fd, 0644)`` itself, whatever the umask (seen with strace on
tritonserver 2.51: ``openat(... O_CREAT|O_EXCL ..., 0644)`` then ``fchmod(3, 0644)``). No
option of Triton or of the backend changes that mode, and a ``chmod`` by ``serve`` afterwards
would leave a window in which any local user can open the region and keep it. So Triton runs
under a seccomp filter that answers an ``fchmod`` granting group or other bits with success
without doing it: the region keeps the mode the umask gave it, 0600. Nothing else is
filtered; ``fchmod`` to owner-only modes (onnxruntime's 0700) runs as before.

Called in the child between fork and exec (:func:`restrict_to_owner`).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

PR_SET_NO_NEW_PRIVS = 38  # linux/prctl.h: needed to install a filter without privileges
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000  # with errno 0: the call returns 0 and is not run
# The kernel's architecture tag and fchmod's syscall number, per machine (linux/audit.h, unistd.h).
FCHMOD = {"x86_64": (0xC000003E, 91), "aarch64": (0xC00000B7, 52)}
# Classic BPF opcodes.
LD_W_ABS, JEQ_K, JSET_K, RET_K = 0x20, 0x15, 0x45, 0x06
# struct seccomp_data: nr at 0, arch at 4, args[] from 16 (8 bytes each; fchmod's mode is args[1]).
NR_AT, ARCH_AT, MODE_AT = 0, 4, 24


def fchmod_filter(machine: str | None = None) -> bytes | None:
    """The BPF program (packed ``struct sock_filter``s) for this machine, or None where it is not known."""
    arch, number = FCHMOD.get(machine or platform.machine(), (None, None))
    if arch is None:
        return None
    program = [
        (LD_W_ABS, 0, 0, ARCH_AT),
        (JEQ_K, 0, 5, arch),  # another ABI: allow
        (LD_W_ABS, 0, 0, NR_AT),
        (JEQ_K, 0, 3, number),  # not fchmod: allow
        (LD_W_ABS, 0, 0, MODE_AT),
        (JSET_K, 0, 1, 0o077),  # no group or other bit asked: allow
        (RET_K, 0, 0, SECCOMP_RET_ERRNO),
        (RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    return b"".join(struct.pack("HBBI", *op) for op in program)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


_FILTER = fchmod_filter()


def restrict_to_owner() -> bool:  # pragma: no cover (runs in the child between fork and exec)
    """Umask 077 and the ``fchmod`` filter for this process and all it starts; False where the filter
    could not be installed (an unknown machine, a kernel without seccomp): the umask alone then."""
    os.umask(0o077)
    if _FILTER is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    program = _SockFprog(len(_FILTER) // 8, _FILTER)
    return (
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
        and libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) == 0
    )
