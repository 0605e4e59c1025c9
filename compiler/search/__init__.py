"""Per-layer compression search against measured latency and an accuracy budget."""
