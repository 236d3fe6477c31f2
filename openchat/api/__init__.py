"""The HTTP layer: the FastAPI app (app.py) and its route families (admin.py,
documents.py, embeddings.py), every route declared once with its scopes (routing.py),
the access middleware (middleware.py), error handlers (errors.py) and response framing
with disconnect handling (streaming.py).

May import every layer below (generation, tools, access, protocol, telemetry, the
foundation). Nothing below imports it.
"""
