"""The local, offline OpenAI Realtime emulator (GA WebRTC protocol).

``config`` (engine behaviour, fault knobs, the process config), ``app`` (HTTP endpoints,
``create_app``), ``event_log`` (events as JSON lines), ``peer`` (the aiortc answerer per call),
``engine`` (the sans-I/O session state machine) with its parts ``turns`` (caller audio, VAD),
``items`` (conversation items), ``responses`` (a response's record and wire objects),
``replies`` (what the assistant says) and ``usage`` (token accounting), ``schema`` (GA session
validation and merge), ``voice`` (synthesized replies), ``cli`` (``gateway emulator``).
"""
