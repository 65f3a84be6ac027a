"""The fax provider: its API client (``.client``) and a simulator of it (``.simulator``).

Nothing is re-exported here: import from ``gatewayd.provider.client`` (only
it knows the provider's paths, docs/provider.md), so the daemon never loads
the simulator.
"""
