"""The TCP sockets a process tree listens on, read from /proc (Linux): which address each is bound to."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

LISTEN = "0A"  # /proc/net/tcp's st column


def process_tree(root: int) -> set[int]:
    """``root`` and every process descended from it that is alive now."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return tree


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    except OSError:  # the process (or the fd) is gone
        pass
    return inodes


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6}'s address: 32-bit words in host (little-endian) order."""
    raw = b"".join(bytes.fromhex(hex_address[i:i + 8])[::-1] for i in range(0, len(hex_address), 8))
    address = ipaddress.ip_address(raw)
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def listening(pids: set[int]) -> dict[int, set[tuple[str, int]]]:
    """For each of ``pids`` that listens: its listening sockets as (address, port)."""
    tables = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN:
                host, port = fields[1].split(":")
                tables[fields[9]] = (str(_address(host)), int(port, 16))
    found = {}
    for pid in pids:
        sockets = {tables[inode] for inode in _socket_inodes(pid) if inode in tables}
        if sockets:
            found[pid] = sockets
    return found


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback
