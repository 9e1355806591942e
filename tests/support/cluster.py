"""A real local Redis Cluster on free loopback ports, from the same binary.

Three masters by default; ``replicas=1`` gives each master a replica (six nodes), so a
master can be killed and its replica promoted (:meth:`LocalCluster.kill`,
:meth:`LocalCluster.wait_promoted`, :meth:`LocalCluster.restart`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

from tests.support.servers import RedisProcess, server_binary

__all__ = ["ClusterNode", "LocalCluster", "cluster_env"]


def _cluster_ports(count: int) -> list[int]:
    """Ports in 20000-45000 whose cluster-bus port (+10000) is free too."""
    ports: list[int] = []
    candidate = 20000 + (time.monotonic_ns() // 1000) % 20000
    while len(ports) < count:
        candidate = 20000 + (candidate + 7) % 25000
        if all(_free(p) for p in (candidate, candidate + 10000)):
            ports.append(candidate)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _cli() -> str:
    cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
    assert cli, "redis-cli is needed to create a cluster"
    return cli


class _PortTakenError(AssertionError):
    """A node could not start on its port."""


@dataclass(frozen=True)
class ClusterNode:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "-" for a master
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags and "fail" not in self.flags

    def owns(self, slot: int) -> bool:
        return any(start <= slot <= end for start, end in self.slots)


def _parse_nodes(reply: str) -> list[ClusterNode]:
    nodes = []
    for line in reply.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        slots = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being migrated
                continue
            start, _, end = item.partition("-")
            slots.append((int(start), int(end or start)))
        port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
        flags = frozenset(parts[2].split(","))
        nodes.append(ClusterNode(parts[0], port, flags, parts[3], tuple(slots)))
    return nodes


@dataclass
class LocalCluster:
    masters: int = 3
    replicas: int = 0  #: replicas per master
    node_timeout_ms: int = 2000  #: cluster-node-timeout: how soon a silent master fails
    nodes: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> LocalCluster:
        # Ports are free when chosen, not reserved: a process started meanwhile (another
        # test run on the machine) can take one first. Then pick new ports and try again.
        for attempt in range(3):
            try:
                return self._start(timeout)
            except _PortTakenError:
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> LocalCluster:
        binary = server_binary()
        count = self.masters * (1 + self.replicas)
        for port in _cluster_ports(count):
            extra = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
            ]  # fmt: skip
            if self.replicas:
                extra += [
                    # A replica fails over however long it was cut off from its master
                    # (the failover tests cut the link on purpose before the kill).
                    "--cluster-replica-validity-factor", "0",
                    # Healthy masters keep serving their slots while one range has no
                    # master (the default refuses every query, cluster-wide, meanwhile).
                    "--cluster-require-full-coverage", "no",
                    # Replicas sync at once (the default waits 5 s for more replicas).
                    "--repl-diskless-sync-delay", "0",
                ]  # fmt: skip
            node = RedisProcess(binary=binary, port=port, extra=extra)
            self.nodes.append(node)
            try:
                node.start()
            except AssertionError as exc:  # exited at start: its port was taken
                raise _PortTakenError(str(exc)) from exc
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        replicas = ["--cluster-replicas", str(self.replicas)]
        subprocess.run(
            [_cli(), "--cluster", "create", *addresses, *replicas, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._ready(n) for n in self.nodes):
                return self
            time.sleep(0.05)
        raise AssertionError("cluster did not reach cluster_state:ok")

    def _ready(self, node: RedisProcess) -> bool:
        """The node sees an ok cluster with every node in its role, and a replica has
        synced with its master."""
        if "cluster_state:ok" not in self.cli(node.port, "cluster", "info"):
            return False
        seen = _parse_nodes(self.cli(node.port, "cluster", "nodes"))
        if len([n for n in seen if n.is_master and n.slots]) != self.masters:
            return False
        if len([n for n in seen if "slave" in n.flags]) != self.masters * self.replicas:
            return False
        info = self.cli(node.port, "info", "replication")
        return "role:master" in info or "master_link_status:up" in info

    @staticmethod
    def cli(port: int, *args: str) -> str:
        """A redis-cli command on one node; its output ("" when it does not answer)."""
        done = subprocess.run(
            [_cli(), "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return done.stdout

    def node(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def topology(self, port: int | None = None) -> list[ClusterNode]:
        """``CLUSTER NODES`` as node ``port`` (default: any node that answers) sees it."""
        ports = [port] if port is not None else [n.port for n in self.nodes if n.proc]
        for each in ports:
            reply = self.cli(each, "cluster", "nodes")
            if reply.strip():
                return _parse_nodes(reply)
        raise AssertionError("no node answers CLUSTER NODES")

    def masters_now(self) -> list[ClusterNode]:
        """The masters that own slots, as a node that answers sees them."""
        return [n for n in self.topology() if n.is_master and n.slots]

    def master_of(self, slot: int, port: int | None = None) -> ClusterNode:
        return next(n for n in self.topology(port) if n.is_master and n.owns(slot))

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        return next(n for n in self.topology() if n.master_id == master.node_id)

    def kill(self, port: int) -> None:
        """SIGKILL one node (by its pid); its files stay for :meth:`restart`."""
        self.node(port).stop()

    def restart(self, port: int, timeout: float = 10.0) -> None:
        """Start a killed node again on its port with its nodes.conf."""
        self.node(port).start(timeout)

    def owners_agree(self, slot: int, port: int) -> bool:
        """Every live node sees ``port`` as the master of ``slot``."""
        for node in self.nodes:
            if node.proc is None:
                continue
            seen = [n for n in self.topology(node.port) if n.is_master and n.owns(slot)]
            if [n.port for n in seen] != [port]:
                return False
        return True

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.nodes.clear()


def cluster_env(cluster: LocalCluster, prefix: str, **extra: str) -> dict[str, str]:
    """The environment of a service process on ``cluster``, keys under ``prefix``."""
    return {
        "REDIS_URL": cluster.url,
        "REDIS_CLUSTER": "true",
        "KEY_PREFIX": prefix,
        "WORKER_BLOCK_MS": "100",
        "WORKER_METRICS_PORT": "0",
        **extra,
    }
