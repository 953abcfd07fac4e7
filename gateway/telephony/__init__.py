"""Carrier side of the gateway: media-stream messages, dialect codecs, mark ledger, signatures.

- :mod:`~gateway.telephony.messages` — carrier-neutral message types and the ``CarrierCodec``
  interface;
- :mod:`~gateway.telephony.twilio` — the Twilio Media Streams dialect (both ends);
- :mod:`~gateway.telephony.ledger` — what the caller has actually heard, from mark echoes;
- :mod:`~gateway.telephony.signature` — ``X-Twilio-Signature`` validation and public URLs.

All of it is sans-I/O: the bridge and the simulated carrier do the reading and writing.
"""
