"""Judge tests use the scripted chat-completions server of tests/chat_server.py."""

from chat_server import api_key, chat_server  # noqa: F401
