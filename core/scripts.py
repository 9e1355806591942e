"""The Lua scripts, loaded from ``core/lua`` through importlib.resources, and the encoding
of limits they share with Python.

``check`` is assembled from one file per algorithm plus ``decide.lua`` (which resolves a
key's limits, decides over all of them and spends) and ``check.lua`` (the entry point), so a
check is a single script call whatever the key's limits; ``check_all`` (all-or-nothing),
``check_many`` (independent checks of many keys), ``acquire`` (take a lease) and ``refund``
(give tokens back) share the same parts; ``release`` stands alone. Scripts are run
by SHA; a ``NOSCRIPT`` answer is handled where they are sent (:mod:`core.lanes`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING

import msgspec

from schemas.limits import ALGORITHMS, CONCURRENCY, Limit

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "ACQUIRE",
    "APPLY",
    "APPLY_DOCUMENT",
    "APPLY_POLICY",
    "CHECK",
    "CHECK_ALL",
    "CHECK_GROUP",
    "CHECK_MANY",
    "FINISH",
    "READ_POLICIES",
    "REFUND",
    "RELEASE",
    "Script",
    "decode_limits",
    "encode_limits",
    "limit_args",
]

_CHECK_PARTS = (
    "prelude.lua",
    "token_bucket.lua",
    "gcra.lua",
    "fixed_window.lua",
    "sliding_window.lua",
    "concurrency.lua",
    "decide.lua",
)
#: The scripts' codes of the limits: the rate algorithms 1-4 in the order of ALGORITHMS, a
#: fixed window that is a UTC calendar month (``calendar: "month"``) 5, concurrency 6.
_ALG_INDEX = {name: i + 1 for i, name in enumerate(ALGORITHMS)}
_MONTH = 5
_ALG_INDEX[CONCURRENCY] = _CONCURRENCY = 6


def _code(limit: Limit) -> int:
    return _ALG_INDEX[limit.algorithm] if limit.calendar is msgspec.UNSET else _MONTH


def _read(name: str) -> str:
    return files("core").joinpath("lua").joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script known by its SHA1."""

    name: str
    source: str
    sha: str

    @classmethod
    def from_source(cls, name: str, source: str) -> Script:
        return cls(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


def limit_args(limits: Sequence[Limit]) -> list[int]:
    """``k`` and 4 integers per limit, as the check scripts take the limits they are given
    (codes as :data:`_ALG_INDEX` says)."""
    out = [len(limits)]
    for limit in limits:
        out += [_code(limit), limit.requests, limit.window_ms, limit.burst or 0]
    return out


_SHADOW = "S;"


def encode_limits(limits: Sequence[Limit], *, shadow: bool = False) -> str:
    """A key's own limits as its hash stores them: ``alg,requests,window_ms,burst;...``,
    after ``S;`` in shadow mode."""
    text = ";".join(f"{_code(x)},{x.requests},{x.window_ms},{x.burst or 0}" for x in limits)
    return _SHADOW + text if shadow else text


def decode_limits(text: str) -> tuple[tuple[Limit, ...], bool]:
    """The inverse of :func:`encode_limits`: (the limits, shadow)."""
    shadow = text.startswith(_SHADOW)
    out = []
    for part in text.removeprefix(_SHADOW).split(";"):
        alg, requests, window_ms, burst = (int(v) for v in part.split(","))
        if alg == _MONTH:
            out.append(Limit(requests, window_ms, "fixed_window", calendar="month"))
        elif alg == _CONCURRENCY:
            out.append(Limit(requests, window_ms, CONCURRENCY))
        else:
            out.append(Limit(requests, window_ms, ALGORITHMS[alg - 1], burst or None))
    return tuple(out), shadow


_DECIDE = "\n".join(_read(p) for p in _CHECK_PARTS)
CHECK = Script.from_source("check", _DECIDE + "\n" + _read("check.lua"))
CHECK_ALL = Script.from_source("check_all", _DECIDE + "\n" + _read("check_all.lua"))
CHECK_MANY = Script.from_source("check_many", _DECIDE + "\n" + _read("check_many.lua"))
ACQUIRE = Script.from_source("acquire", _DECIDE + "\n" + _read("acquire.lua"))
REFUND = Script.from_source("refund", _DECIDE + "\n" + _read("refund.lua"))
RELEASE = Script.from_source("release", _read("release.lua"))
CHECK_GROUP = Script.from_source("check_group", _DECIDE + "\n" + _read("check_group.lua"))
_VERSIONS = _read("versions.lua")
APPLY = Script.from_source("apply", _VERSIONS + "\n" + _read("apply.lua"))
APPLY_POLICY = Script.from_source("apply_policy", _VERSIONS + "\n" + _read("apply_policy.lua"))
APPLY_DOCUMENT = Script.from_source(
    "apply_document", _VERSIONS + "\n" + _read("apply_document.lua")
)
READ_POLICIES = Script.from_source("read_policies", _read("read_policies.lua"))
FINISH = Script.from_source("finish", _read("finish.lua"))
