"""The edge every handler inherits: request id, client IP, security and CORS headers, client key, rate limit,
budget standing, body headers and the error shapes; the policies it applies live in the core (`server/`)."""
