"""Audio core: G.711, streaming resamplers, the per-call transcoder, local VAD, offline TTS."""
