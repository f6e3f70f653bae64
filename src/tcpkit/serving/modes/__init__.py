"""How clients are served: each mode moves bytes between sockets and sans-IO connections.

See the map in :mod:`tcpkit.serving`.
"""
