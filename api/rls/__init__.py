"""Envoy's rate limit service (``envoy.service.ratelimit.v3``) over gRPC: a second edge
beside HTTP, sharing core's gateway and scripts (docs/envoy.md)."""

__all__: list[str] = []
