"""Closing a listening TCP socket without resetting the connections it has accepted.

The kernel completes handshakes by itself and queues the connections until the server
calls ``accept()``. Closing the listener resets every connection still in that queue: a
client that had connected, and often already sent its request, gets ``ECONNRESET``. So
the server first stops *new* handshakes — a classic BPF socket filter drops bare SYNs, and
clients retransmit them (after about a second) to find the port closed: connection
refused — then accepts what is still queued, and only then closes the socket.

Linux only (``SO_ATTACH_FILTER``, ``TCP_INFO``); elsewhere :func:`refuse_new_connections`
returns False and the listener is closed as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import sys
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Listener", "accept_queue_length", "refuse_new_connections"]


class Listener(Protocol):
    """A listening socket as an event loop hands it out (a socket-like object)."""

    def fileno(self) -> int: ...


_SO_ATTACH_FILTER = 26

# The filter runs with the packet starting at the TCP header (byte 13: the flags).
# A = flags & (SYN|ACK); a bare SYN (a new connection) is dropped, everything else —
# handshakes in progress, data of established connections — passes.
_BPF_LD_B_ABS, _BPF_ALU_AND_K, _BPF_JEQ_K, _BPF_RET_K = 0x30, 0x54, 0x15, 0x06
_SYN, _ACK = 0x02, 0x10


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


_DROP_SYN = b"".join(
    (
        _insn(_BPF_LD_B_ABS, 0, 0, 13),
        _insn(_BPF_ALU_AND_K, 0, 0, _SYN | _ACK),
        _insn(_BPF_JEQ_K, 0, 1, _SYN),
        _insn(_BPF_RET_K, 0, 0, 0),  # drop
        _insn(_BPF_RET_K, 0, 0, 0xFFFFFFFF),  # keep the whole packet
    )
)
_PROGRAM = ctypes.create_string_buffer(_DROP_SYN, len(_DROP_SYN))


@contextlib.contextmanager
def _tcp(listener: Listener) -> Iterator[socket.socket | None]:
    """The listener as a socket object of its own (a duplicate descriptor); None when it is
    not TCP on Linux."""
    if not sys.platform.startswith("linux"):
        yield None
        return
    with socket.socket(fileno=os.dup(listener.fileno())) as sock:
        tcp = sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
        yield sock if tcp else None


def refuse_new_connections(listener: Listener) -> bool:
    """Make the listener ignore new connection attempts; True when that worked.

    The socket keeps listening: connections already queued, and handshakes already under
    way, can still be accepted. Shared by every process holding the socket.
    """
    # struct sock_fprog {unsigned short len; struct sock_filter *filter;}
    fprog = struct.pack("HL", len(_DROP_SYN) // 8, ctypes.addressof(_PROGRAM))
    with _tcp(listener) as sock:
        if sock is None:
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
        except OSError:
            return False
        return True


def accept_queue_length(listener: Listener) -> int:
    """Connections the kernel has accepted for a listening socket that await ``accept()``.

    ``TCP_INFO`` of a listener reports its accept queue in ``tcpi_unacked``; 0 when unknown.
    """
    with _tcp(listener) as sock:
        if sock is None:
            return 0
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
        except OSError:
            return 0
    # 8 one-byte fields, then u32 rto, ato, snd_mss, rcv_mss, unacked.
    queued: int = struct.unpack_from("I", info, 24)[0]
    return queued
