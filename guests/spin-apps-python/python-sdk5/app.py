"""python-sdk5: a Spin HTTP component in Python (Spin SDK 5.x, Spin 4's async world), for
wasmcell's tests. It serves what python-kv (SDK 3) serves, worded "Python 5".

GET /hello         -> 200 "<greeting>, Python 5!" (the Spin variable `greeting`)
PUT /kv/KEY        -> 201, stores the body under KEY in the default key-value store
GET /kv/KEY        -> 200 with the value, or 404
GET /kv-keys       -> 200 the store's keys, sorted, joined by ","
GET /sql           -> 200 "rows: N": inserts a row into the default SQLite database and counts them
GET /pg            -> 200 "<text> <number>": a query with parameters to PostgreSQL at the Spin
                      variable `pg_address`; or 502 with the error Spin's postgres interface answers
GET /redis         -> 200 "<value> <count>" ("from Python 5 1" at first): sets "python5" to
                      "from Python 5", gets it and increments "python5-count" in Redis at the
                      Spin variable `redis_address` (spin_sdk.redis); or 502 with the error
GET /mysql         -> 200 "rows: N word: hello": creates the table python5 if missing, inserts
                      a row with a parameter ("hello") and counts the rows in MySQL at the Spin
                      variable `mysql_address` (spin_sdk.mysql); or 502 with the error
POST /mqtt?topic=T -> 200 "published": publishes the body to topic T (QoS at-least-once) at
                      the MQTT broker at the Spin variable `mqtt_address` (spin_sdk.mqtt); or 502
                      with the error
GET /outbound?url= -> 200 "<status>\n<body>" of a GET of URL (wasi:http/client@0.3.0); or 502
                      with the error the host answers (e.g. HttpRequestDenied: the manifest
                      allows only PostgreSQL, Redis, MySQL and MQTT)
anything else      -> 404

A 502's body is "<variant>: <value>" of the error the host answered, e.g.
"Error_ConnectionFailed: ..." (postgres, mysql, mqtt) or "Error_Other: ..." (redis).

Every call into Spin is async (the SDK awaits the `*-async` functions of spin:sqlite@3.1.0 and
spin:postgres@4.2.0, and spin:key-value@3.0.0, spin:variables@3.0.0, spin:redis@3.0.0,
spin:mysql@3.0.0 and spin:mqtt@3.0.0, which are async only); rows and keys come as a stream plus
a future of the outcome, which spin_sdk.util.collect reads (and raises the outcome's error).
"""

from typing import Any
from urllib.parse import parse_qs, urlsplit

from componentize_py_types import Err
from spin_sdk import http, key_value, mqtt, mysql, postgres, redis, sqlite, util, variables
from spin_sdk.http import Request, Response
from spin_sdk.mqtt import Qos
from spin_sdk.sqlite import Value_Integer
from spin_sdk.wit.imports.spin_postgres_postgres_4_2_0 import (
    DbValue_Int32,
    DbValue_Str,
    ParameterValue_Int32,
    ParameterValue_Str,
    QueryError_DbError,
    QueryError_Text,
)
from spin_sdk.wit.imports.spin_mysql_mysql_3_0_0 import (
    DbValue_Binary as MysqlDbValue_Binary,
    ParameterValue_Str as MysqlParameterValue_Str,
)


def text(status: int, body: str) -> Response:
    return Response(status, {"content-type": "text/plain"}, body.encode())


def describe(error: Err[Any]) -> str:
    """The error a Spin or WASI call raised, as "<variant>: <value>" (python-kv's form), e.g.
    "Error_ConnectionFailed: ..." (spin:postgres) or "ErrorCode_HttpRequestDenied" (wasi:http).
    """
    variant = error.value
    value = getattr(variant, "value", None)
    # postgres 4.x's query-failed carries a query-error: text, or a structured database error.
    if isinstance(value, QueryError_Text):
        value = value.value
    elif isinstance(value, QueryError_DbError):
        value = value.value.as_text
    return type(variant).__name__ if value is None else f"{type(variant).__name__}: {value}"


class HttpHandler(http.Handler):
    async def handle_request(self, request: Request) -> Response:
        url = urlsplit(request.uri)
        path = url.path
        if request.method == "GET" and path == "/hello":
            return text(200, f"{await variables.get('greeting')}, Python 5!\n")
        if path.startswith("/kv/") and request.method in ("PUT", "GET"):
            key = path[len("/kv/"):]
            with await key_value.open_default() as store:
                if request.method == "PUT":
                    await store.set(key, request.body or b"")
                    return text(201, "")
                value = await store.get(key)
                if value is None:
                    return text(404, "not found\n")
                return Response(200, {"content-type": "application/octet-stream"}, value)
        if request.method == "GET" and path == "/kv-keys":
            with await key_value.open_default() as store:
                keys = await util.collect(await store.get_keys())
            return text(200, ",".join(sorted(keys)) + "\n")
        if request.method == "GET" and path == "/sql":
            with await sqlite.Connection.open_default() as db:
                # Each statement's rows and outcome are read to the end: the outcome tells
                # whether it succeeded (util.collect raises its error).
                _, rows, outcome = await db.execute(
                    "CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY, n INTEGER)", []
                )
                await util.collect((rows, outcome))
                _, rows, outcome = await db.execute(
                    "INSERT INTO hits (n) VALUES (?)", [Value_Integer(1)]
                )
                await util.collect((rows, outcome))
                _, rows, outcome = await db.execute("SELECT COUNT(*) FROM hits", [])
                count = (await util.collect((rows, outcome)))[0].values[0]
            assert isinstance(count, Value_Integer), count
            return text(200, f"rows: {count.value}\n")
        if request.method == "GET" and path == "/pg":
            try:
                address = await variables.get("pg_address")
                with await postgres.Connection.open(address) as db:
                    _, pg_rows, pg_outcome = await db.query(
                        "SELECT $1::text || ' from Python 5', $2::int4 + 2",
                        [ParameterValue_Str("hello"), ParameterValue_Int32(40)],
                    )
                    row = (await util.collect((pg_rows, pg_outcome)))[0]
            except Err as e:
                # e.value is a spin:postgres@4.2.0 error variant, e.g. Error_ConnectionFailed("...").
                return text(502, describe(e) + "\n")
            greeting, number = row
            assert isinstance(greeting, DbValue_Str) and isinstance(number, DbValue_Int32), row
            return text(200, f"{greeting.value} {number.value}\n")
        if request.method == "GET" and path == "/redis":
            try:
                address = await variables.get("redis_address")
                with await redis.open(address) as conn:
                    await conn.set("python5", b"from Python 5")
                    value = await conn.get("python5")
                    hits = await conn.incr("python5-count")
            except Err as e:
                # e.value is a spin:redis@3.0.0 error variant, e.g. Error_Other("...").
                return text(502, describe(e) + "\n")
            stored = "(none)" if value is None else value.decode()
            return text(200, f"{stored} {hits}\n")
        if request.method == "GET" and path == "/mysql":
            try:
                address = await variables.get("mysql_address")
                with await mysql.open(address) as db:
                    await db.execute(
                        "CREATE TABLE IF NOT EXISTS python5"
                        " (id INT AUTO_INCREMENT PRIMARY KEY, word VARCHAR(32))",
                        [],
                    )
                    await db.execute(
                        "INSERT INTO python5 (word) VALUES (?)", [MysqlParameterValue_Str("hello")]
                    )
                    # query answers the columns, a stream of rows and a future of the outcome.
                    _, my_rows, my_outcome = await db.query(
                        "SELECT COUNT(*), MAX(word) FROM python5", []
                    )
                    my_row = (await util.collect((my_rows, my_outcome)))[0]
            except Err as e:
                # e.value is a spin:mysql@3.0.0 error variant, e.g. Error_ConnectionFailed("...").
                return text(502, describe(e) + "\n")
            # COUNT(*) is a BIGINT (db-value int64 or uint64), MAX(word) a str (or binary).
            total = getattr(my_row[0], "value", None)
            max_word = my_row[1]
            if isinstance(max_word, MysqlDbValue_Binary):
                word = max_word.value.decode()
            else:
                word = str(getattr(max_word, "value", None))
            return text(200, f"rows: {total} word: {word}\n")
        if request.method == "POST" and path == "/mqtt":
            topic = parse_qs(url.query).get("topic", [""])[0]
            try:
                address = await variables.get("mqtt_address")
                with await mqtt.open(address, "", "", 30) as broker:
                    await broker.publish(topic, request.body or b"", Qos.AT_LEAST_ONCE)
            except Err as e:
                # e.value is a spin:mqtt@3.0.0 error variant, e.g. Error_ConnectionFailed("...").
                return text(502, describe(e) + "\n")
            return text(200, "published\n")
        if request.method == "GET" and path == "/outbound":
            target = parse_qs(url.query).get("url", [""])[0]
            try:
                answer = await http.send(Request("GET", target, {}, None))
            except Err as e:
                # e.value is a wasi:http/types@0.3.0 error-code, e.g. ErrorCode_HttpRequestDenied().
                return text(502, describe(e) + "\n")
            return Response(
                200,
                {"content-type": "application/octet-stream"},
                f"{answer.status}\n".encode() + (answer.body or b""),
            )
        return text(404, "not found\n")
