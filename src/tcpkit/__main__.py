"""``python -m tcpkit``: the same as the ``tcpkit`` command."""

from tcpkit.cli import main

main()
