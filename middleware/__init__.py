"""The edge every handler inherits: request id, security headers, CORS, client keys, rate limits, validation."""
