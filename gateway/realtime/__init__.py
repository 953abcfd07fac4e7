"""The gateway's client side of the OpenAI Realtime API: one WebRTC session per phone call.

* :mod:`gateway.realtime.events` — GA client event builders and a fast server event parser (pure);
* :mod:`gateway.realtime.tracks` — the paced outbound audio track and the inbound frame reader;
* :mod:`gateway.realtime.session` — :class:`~gateway.realtime.session.RealtimeSession`: SDP
  exchange over HTTP, the aiortc peer, the ``oai-events`` data channel, setup phases and close.

Submodules are imported explicitly; importing this package does not load aiortc.
"""
