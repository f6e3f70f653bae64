"""What an operator sees: events, counters, Prometheus metrics, names in the logs.

See the map in :mod:`tcpkit.serving`.
"""
