"""The gateway's client side of the OpenAI Realtime API: one WebRTC session per phone call.

* :mod:`gateway.realtime.events` — GA client event builders and a fast server event parser (pure);
* :mod:`gateway.realtime.tracks` — the paced caller-audio track (caller -> model) and
  the remote-track reader (model -> caller in the gateway);
* :mod:`gateway.realtime.config` — :class:`~gateway.realtime.config.RealtimeConfig`, the values
  the client takes (base URL, auth, ICE servers, timeouts);
* :mod:`gateway.realtime.signalling` — the HTTP requests: SDP offer/answer, client secrets,
  hangup, and how refusals become errors;
* :mod:`gateway.realtime.session` — :class:`~gateway.realtime.session.RealtimeSession`: the
  aiortc peer, the ``oai-events`` data channel, setup phases and close.

Submodules are imported explicitly; importing this package does not load aiortc.
"""
