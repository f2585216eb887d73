"""tornado-ai-stream: a small, fast, correct SSE gateway in front of OpenRouter-compatible LLM APIs."""

__version__ = "0.1.0"
