"""The load tester and the demo's simulated carrier.

- :mod:`~gateway.loadtest.carrier` — sans-I/O: Twilio-like playout buffer, caller-side stream
  numbering, histograms;
- :mod:`~gateway.loadtest.caller` — :class:`~gateway.loadtest.caller.SimulatedCall`: one
  scripted carrier call over a real websocket, paced in real time, with its timeline.
"""
