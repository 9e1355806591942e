"""A real local Redis Cluster: three masters on free loopback ports, from the same binary."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

from tests.support.servers import RedisProcess, server_binary

__all__ = ["LocalCluster"]


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


@dataclass
class LocalCluster:
    masters: int = 3
    nodes: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> LocalCluster:
        binary = server_binary()
        for port in _cluster_ports(self.masters):
            node = RedisProcess(
                binary=binary,
                port=port,
                extra=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-node-timeout", "2000",
                ],
            )  # fmt: skip
            self.nodes.append(node.start())
        cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
        assert cli, "redis-cli is needed to create a cluster"
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    [cli, "-p", str(n.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=False,
                ).stdout
                for n in self.nodes
            ]
            if all("cluster_state:ok" in s for s in states):
                return self
            time.sleep(0.05)
        raise AssertionError("cluster did not reach cluster_state:ok")

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.nodes.clear()
