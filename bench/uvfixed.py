"""``throttler serve --workers N`` as uvicorn runs it, but with TCP_NODELAY on connections.

uvicorn's supervisor (``--workers`` > 1) binds the listening socket with ``proto`` 0;
accepted sockets inherit it and asyncio only sets TCP_NODELAY when ``proto`` is
IPPROTO_TCP, so every keep-alive answer after the first waits ~40 ms for the client's
delayed ACK (uvicorn issue #3149, open for 0.54). This runs the same supervisor with the
socket re-wrapped as IPPROTO_TCP, to measure what the fix gives; it is the change
``throttler/cli.py`` could make if it kept uvicorn.

``python -m bench.uvfixed --port P --workers N`` (environment as for ``throttler serve``).
"""

from __future__ import annotations

import argparse
import os
import socket

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.uvfixed")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    os.environ.setdefault("THROTTLER_SERVE_WORKER", "1")
    config = uvicorn.Config(
        "throttler.cli:app_factory",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
        server_header=False,
    )
    bound = config.bind_socket()
    family, kind = bound.family, bound.type
    sock = socket.socket(family, kind, socket.IPPROTO_TCP, fileno=bound.detach())
    Multiprocess(config, sockets=[sock]).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
