"""The local, offline OpenAI Realtime emulator (GA WebRTC protocol).

``app`` (HTTP endpoints, fault knobs, ``create_app``), ``peer`` (the aiortc answerer per call),
``engine`` (the sans-I/O session state machine), ``schema`` (GA session validation and merge),
``voice`` (synthesized replies), ``cli`` (``gateway emulator``).
"""
