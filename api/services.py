"""What the routes need, built once per process at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from api.drain import Drain
from core.metrics import Metrics
from core.telemetry import Telemetry

if TYPE_CHECKING:
    from api.throttle import AddressThrottle, ListenerSlots
    from core.config_store import ConfigStore
    from core.domains import DomainSync
    from core.gateway import Gateway
    from core.keys import KeySpace
    from core.limiter import Limiter
    from core.mutations import Mutations
    from core.notifications import NotificationHub
    from core.policies import PolicySync
    from core.settings import Settings

__all__ = ["Services"]


@dataclass(slots=True)
class Services:
    settings: Settings
    keys: KeySpace
    gateway: Gateway
    limiter: Limiter
    config: ConfigStore
    hub: NotificationHub
    mutations: Mutations
    policies: PolicySync
    auth_failures: AddressThrottle
    mutation_limit: AddressThrottle
    listeners: ListenerSlots
    domains: DomainSync
    metrics: Metrics = field(default_factory=Metrics)
    telemetry: Telemetry = field(default_factory=Telemetry)
    drain: Drain = field(default_factory=Drain)

    async def ping(self) -> bool:
        return await self.gateway.ping()
