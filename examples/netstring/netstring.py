"""netstring: each netstring's payload comes back reversed byte-wise, as a netstring.

    $ printf '5:hello,3:abc,' | nc -q1 127.0.0.1 7816
    5:olleh,3:cba,

No session is needed: a stateless answer with ``framer=Netstrings()``.  A
malformed netstring (``5:hello;``) gets one error netstring and the connection
closes, because the stream cannot be framed reliably after it.
"""

from tcpkit import Service
from tcpkit.framers import Netstrings


def reverse_bytes(payload: bytes) -> bytes:
    return payload[::-1]


SERVICE = Service("netstring", 7816, "reverses each netstring's payload", reverse_bytes,
                  framer=Netstrings())
