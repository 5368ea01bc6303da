"""podlink.protocol: keys, the signed event envelope, event kinds, boxes and signed requests.

No I/O lives here except reading and writing key files.
"""

from podlink.protocol.envelope import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
