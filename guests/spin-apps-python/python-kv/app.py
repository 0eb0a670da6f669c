"""python-kv: a Spin HTTP component in Python (Spin SDK 3.x), for wasmcell's tests.

GET /hello      -> 200 "<greeting>, Python!" (the Spin variable `greeting`)
PUT /kv/KEY     -> 201, stores the body under KEY in the default key-value store
GET /kv/KEY     -> 200 with the value, or 404
GET /sql        -> 200 "rows: N": inserts a row into the default SQLite database and counts them
GET /pg         -> 200 "<text> <number>": a query with parameters to PostgreSQL at the Spin
                   variable `pg_address`; or 502 with the error Spin's postgres interface answers
"""

from spin_sdk import http, key_value, postgres, sqlite, variables
from spin_sdk.http import Request, Response
from spin_sdk.sqlite import Value_Integer
from spin_sdk.wit.imports.rdbms_types import ParameterValue_Int32, ParameterValue_Str
from spin_sdk.wit.types import Err


def text(status: int, body: str) -> Response:
    return Response(status, {"content-type": "text/plain"}, body.encode())


class IncomingHandler(http.IncomingHandler):
    def handle_request(self, request: Request) -> Response:
        path = request.uri.split("?", 1)[0]
        if request.method == "GET" and path == "/hello":
            return text(200, f"{variables.get('greeting')}, Python!\n")
        if path.startswith("/kv/"):
            key = path[len("/kv/"):]
            with key_value.open_default() as store:
                if request.method == "PUT":
                    store.set(key, request.body or b"")
                    return text(201, "")
                if request.method == "GET":
                    value = store.get(key)
                    if value is None:
                        return text(404, "not found\n")
                    return Response(200, {"content-type": "application/octet-stream"}, value)
        if request.method == "GET" and path == "/sql":
            with sqlite.open_default() as db:
                db.execute("CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY, n INTEGER)", [])
                db.execute("INSERT INTO hits (n) VALUES (?)", [Value_Integer(1)])
                count = db.execute("SELECT COUNT(*) FROM hits", []).rows[0].values[0]
                return text(200, f"rows: {count.value}\n")
        if request.method == "GET" and path == "/pg":
            try:
                with postgres.open(variables.get("pg_address")) as db:
                    rows = db.query(
                        "SELECT $1::text || ' from Python', $2::int4 + 2",
                        [ParameterValue_Str("hello"), ParameterValue_Int32(40)],
                    ).rows
            except Err as e:
                # e.value is an rdbms-types error variant, e.g. Error_ConnectionFailed("...").
                return text(502, f"{type(e.value).__name__}: {e.value.value}\n")
            return text(200, f"{rows[0][0].value} {rows[0][1].value}\n")
        return text(404, "not found\n")
