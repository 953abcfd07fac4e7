"""The load tester and the demo's simulated carrier.

- :mod:`~gateway.loadtest.carrier` — sans-I/O: Twilio-like playout buffer, caller-side stream
  numbering, histograms;
- :mod:`~gateway.loadtest.script` — a simulated caller's steps (say, wait for an answer,
  barge in, press digits, hang up);
- :mod:`~gateway.loadtest.flow` — sans-I/O: one call's decisions, fed with messages and ``now``;
- :mod:`~gateway.loadtest.result` — what one call measured, with its timeline;
- :mod:`~gateway.loadtest.caller` — :class:`~gateway.loadtest.caller.SimulatedCall`: one
  scripted carrier call over a real websocket, paced in real time (the flow's I/O);
- :mod:`~gateway.loadtest.scenarios` — what callers say and do, and the weighted mix;
- :mod:`~gateway.loadtest.runner` — :class:`~gateway.loadtest.runner.LoadRun`: many calls at a
  planned load, and the gateway's own figures from its ``/metrics``
  (:mod:`~gateway.loadtest.gateway_metrics`);
- :mod:`~gateway.loadtest.report` — percentiles, thresholds, text, JSON and CSV;
- :mod:`~gateway.loadtest.spawn` — the emulator and a gateway as separate, pinnable processes;
- :mod:`~gateway.loadtest.floor` — bare aiortc peers: the per-call cost no gateway avoids;
- :mod:`~gateway.loadtest.twilio_api` — a stand-in of Twilio's REST Calls resource, so call
  control (hang-up, transfer) is exercised against the simulated carrier;
- :mod:`~gateway.loadtest.cli` — ``gateway loadtest``.
"""
