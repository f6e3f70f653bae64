"""Where offloaded work (a service's Offload answers) runs: a local pool or a Dask cluster.

See the map in :mod:`tcpkit.serving`.
"""
