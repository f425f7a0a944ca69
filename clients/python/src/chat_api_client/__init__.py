"""chat-api's Python client: the whole /v1 API (ChatClient, AsyncChatClient), typed models, RFC 9457
problems as ProblemError, and an event stream that resumes, resets, re-authenticates and dedupes."""

from chat_api_client._calls import UNSET
from chat_api_client.aio import AsyncChatClient, AsyncTokenProvider
from chat_api_client.client import ChatClient, TokenProvider
from chat_api_client.errors import ProblemError
from chat_api_client.models import (
    Member,
    Message,
    MessagePage,
    ProblemDetails,
    Reaction,
    Room,
    RoomDetail,
    RoomPage,
    SearchPage,
)
from chat_api_client.stream import AsyncEventStream, Event, EventStream, Reset, StreamItem, Typing

__version__ = "0.1.0"  # the service's version (pyproject.toml says the same; a test checks both)

__all__ = [
    "UNSET",
    "AsyncChatClient",
    "AsyncEventStream",
    "AsyncTokenProvider",
    "ChatClient",
    "Event",
    "EventStream",
    "Member",
    "Message",
    "MessagePage",
    "ProblemDetails",
    "ProblemError",
    "Reaction",
    "Reset",
    "Room",
    "RoomDetail",
    "RoomPage",
    "SearchPage",
    "StreamItem",
    "TokenProvider",
    "Typing",
    "__version__",
]
