"""Wire types: what crosses HTTP. Request models with their bounds (requests.py,
formats.py), OpenAI response objects and stream chunks (outputs.py), and the error shape
every layer raises (errors.py).

May import: openchat.config, openchat.vocabulary, pydantic, the `openai` package's types.
Knows nothing of HTTP frameworks, the engine's internals, keys or tools.
"""
