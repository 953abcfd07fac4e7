"""The per-call bridge: the barge-in state machine (pure) and the call runner (async)."""
