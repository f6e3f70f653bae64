"""Who may be served, and how safely: admission, TLS, socket activation, descriptors.

See the map in :mod:`tcpkit.serving`.
"""
