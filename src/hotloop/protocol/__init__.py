"""Sans-I/O protocol logic: bytes and events in, events and reports out, no sockets.

* :mod:`~hotloop.protocol.sse`: the text/event-stream decoder and encoder, and a decoder
  from SSE bytes to typed Responses events.
* :mod:`~hotloop.protocol.assembler`: :class:`ResponseStream`, which assembles one streamed
  response and reports each function call the moment its arguments are complete.
* :mod:`~hotloop.protocol.chat`: Chat Completions <-> Responses translation, requests and
  streams in both directions.

The transport layer drives these objects; nothing here awaits, sleeps or touches JSON
except through :mod:`hotloop.wire.codec`.
"""

from hotloop.protocol.assembler import (
    FunctionCallReady,
    ItemDone,
    Report,
    ResponseDone,
    ResponseStream,
    StreamError,
    StreamOrderError,
    TextDelta,
)
from hotloop.protocol.chat import (
    SYSTEM_FINGERPRINT,
    ChatRequest,
    chat_request_to_responses,
    responses_to_chat_request,
)
from hotloop.protocol.chat_stream import (
    ChatChunkEncoder,
    ChatStreamDecoder,
    chat_completion_from_response,
)
from hotloop.protocol.sse import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ResponsesSSEDecoder,
    SSEDecoder,
    SSEMessage,
    encode_sse,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "SYSTEM_FINGERPRINT",
    "ChatChunkEncoder",
    "ChatRequest",
    "ChatStreamDecoder",
    "FunctionCallReady",
    "ItemDone",
    "Report",
    "ResponseDone",
    "ResponseStream",
    "ResponsesSSEDecoder",
    "SSEDecoder",
    "SSEMessage",
    "StreamError",
    "StreamOrderError",
    "TextDelta",
    "chat_completion_from_response",
    "chat_request_to_responses",
    "encode_sse",
    "responses_to_chat_request",
]
