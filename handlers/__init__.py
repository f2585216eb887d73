"""HTTP handlers: thin; they turn validated requests into upstream calls and upstream events into SSE."""
