"""Generation: from a validated request to a response object or its chunks.

The template and conversation (template.py, conversation.py), constraints for structured
output and the tool format (constraints.py, toolformat.py, toolparser.py), the engine
client (engine.py: the `EngineClient` Protocol and vLLM behind it), preparation of one
engine request (preparation.py), the flows (chat.py, completions.py, toolloop.py,
retrieval.py), verification on the way out (answer.py, events.py) and the `Pipeline`
that routes and typed APIs call (pipeline.py).

May import: openchat.protocol, openchat.telemetry, tools (server tools run between two
generations), the foundation (config, vocabulary, devmodel). Never openchat.api: it does
not know it is served over HTTP.
"""
