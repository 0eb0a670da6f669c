// js-kv: a Spin HTTP component in JavaScript, for wasmcell's tests. @spinframework/build-tools
// (j2w, ComponentizeJS on the StarlingMonkey engine) makes it a component exporting
// wasi:http/incoming-handler@0.2.3, which calls the `fetch` event handler below; the Spin
// interfaces are imported by their WIT names (wit/spin.wit).
//
// GET /hello      -> 200 "<greeting>, JavaScript!" (the Spin variable `greeting`)
// PUT /kv/KEY     -> 201, stores the body under KEY in the default key-value store
// GET /kv/KEY     -> 200 with the value, or 404
// GET /sql        -> 200 "rows: N": inserts a row into the default SQLite database and counts them
// GET /pg         -> 200 "<text> <number>": a query with parameters to PostgreSQL at the Spin
//                    variable `pg_address` (spin:postgres@3.0.0), or 502 with the error
import { Store } from 'fermyon:spin/key-value@2.0.0';
import { get as getVariable } from 'fermyon:spin/variables@2.0.0';
import { Connection } from 'fermyon:spin/sqlite@2.0.0';
import { Connection as Postgres } from 'spin:postgres/postgres@3.0.0';

function text(status, body) {
  return new Response(body, { status, headers: { 'content-type': 'text/plain' } });
}

// A WIT error arrives as an exception whose `payload` is the variant, e.g. { tag: 'other', val: '...' }.
function describe(e) {
  return e && e.payload ? JSON.stringify(e.payload) : String(e);
}

async function handle(request) {
  const path = new URL(request.url).pathname;
  if (request.method === 'GET' && path === '/hello') {
    return text(200, `${getVariable('greeting')}, JavaScript!\n`);
  }
  if (path.startsWith('/kv/')) {
    const key = decodeURIComponent(path.slice('/kv/'.length));
    const store = Store.open('default');
    if (request.method === 'PUT') {
      store.set(key, new Uint8Array(await request.arrayBuffer()));
      return text(201, '');
    }
    if (request.method === 'GET') {
      const value = store.get(key);
      if (value === undefined) {
        return text(404, 'not found\n');
      }
      return new Response(value, { status: 200, headers: { 'content-type': 'application/octet-stream' } });
    }
  }
  if (request.method === 'GET' && path === '/sql') {
    const db = Connection.open('default');
    db.execute('CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY, n INTEGER)', []);
    db.execute('INSERT INTO hits (n) VALUES (?)', [{ tag: 'integer', val: 1n }]);
    const count = db.execute('SELECT COUNT(*) FROM hits', []).rows[0].values[0];
    return text(200, `rows: ${count.val}\n`);
  }
  if (request.method === 'GET' && path === '/pg') {
    let row;
    try {
      const db = Postgres.open(getVariable('pg_address'));
      row = db.query("SELECT $1::text || ' from JavaScript', $2::int4 + 2", [
        { tag: 'str', val: 'hello' },
        { tag: 'int32', val: 40 },
      ]).rows[0];
    } catch (e) {
      return text(502, `${describe(e)}\n`);
    }
    return text(200, `${row[0].val} ${row[1].val}\n`);
  }
  return text(404, 'not found\n');
}

addEventListener('fetch', (event) => {
  event.respondWith(
    handle(event.request).catch((e) => text(500, `error: ${describe(e)}\n`)),
  );
});
