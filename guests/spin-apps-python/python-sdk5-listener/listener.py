"""python-sdk5-listener's Redis trigger component (Spin SDK 5.x, Spin 4's world
spin:up/redis-trigger@4.1.0, which exports spin:redis/inbound-redis@3.0.0 with an async
handle-message), for wasmcell's tests: spin.toml subscribes it to the channel
`python5-messages` of the Redis server at the variable `redis_address`.

Each message is stored in the app's default key-value store, which the HTTP component (app.py)
shares and serves at GET /last-message: "last-message" holds the message's payload, and
"messages" the number of messages handled, as decimal text. Spin runs one message of a channel
at a time, so the count's read and write do not race.

scripts/build-python-guests.sh builds this module into python-sdk5-redis.wasm, as the file
`components` beside it says.
"""

from componentize_py_types import Err
from spin_sdk import key_value
from spin_sdk.wit import exports
from spin_sdk.wit.imports.spin_redis_redis_3_0_0 import Error_Other


class RedisHandler(exports.RedisHandler):
    async def handle_message(self, message: bytes) -> None:
        try:
            with await key_value.open_default() as store:
                count = await store.get("messages")
                await store.set("last-message", message)
                await store.set("messages", str(int(count or b"0") + 1).encode())
        except Err as e:
            # handle-message may only raise spin:redis's error: a key-value error (e.g.
            # Error_AccessDenied) becomes its Error_Other, which the host reports.
            raise Err(Error_Other(f"key-value: {e.value}"))
