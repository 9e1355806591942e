"""Test helpers: real Redis servers and real service processes (no fakes)."""
