"""Access: who may call, and how much. API keys (keys.py), scopes (scopes.py) and per-key
rate limits (ratelimit.py and its memory and Redis stores).

May import: openchat.protocol (errors), openchat.databases, openchat.config. Knows nothing
of routes or generation: the HTTP layer asks it.
"""
