"""python-sdk5-listener's HTTP component (Spin SDK 5.x, Spin 4's world
spin:up/http-trigger@4.1.0), for wasmcell's tests: it serves what the app's Redis trigger
(listener.py) keeps in the default key-value store, which both components share.

GET /last-message -> 200 "<count> <message>": the number of messages the trigger has handled
                     ("messages") and the last one's payload ("last-message"); or 404
                     "no message" before the first
anything else     -> 404
"""

from spin_sdk import http, key_value
from spin_sdk.http import Request, Response


def text(status: int, body: str) -> Response:
    return Response(status, {"content-type": "text/plain"}, body.encode())


class HttpHandler(http.Handler):
    async def handle_request(self, request: Request) -> Response:
        path = request.uri.split("?", 1)[0]
        if request.method == "GET" and path == "/last-message":
            with await key_value.open_default() as store:
                count = await store.get("messages")
                message = await store.get("last-message")
            if count is None or message is None:
                return text(404, "no message\n")
            return text(200, f"{count.decode()} {message.decode(errors='replace')}\n")
        return text(404, "not found\n")
