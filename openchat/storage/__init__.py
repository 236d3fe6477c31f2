"""Storage: what the service keeps for its callers between requests, in its own SQL
database (sqlmodel; SQLite by default, PostgreSQL so replicas share it). Stored Responses
API responses and their conversations (responses.py), the Batch API's files (files.py, bytes
in a directory) and batches with their lines, the runners' shared queue (batches.py); each
owned by the API key that made it.

May import: the foundation (openchat.databases, openchat.config). Knows nothing of HTTP,
generation or keys beyond their ids.
"""
