//! A Spin HTTP component that reads from PostgreSQL through Spin's `spin:postgres` interface:
//! the test of what a component importing an interface wasmcell does not provide gets.

use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;
use spin_sdk::pg4::Connection;

#[http_component]
fn handle(_request: Request) -> anyhow::Result<Response> {
    let db = Connection::open("host=localhost user=spin dbname=spin")?;
    let rows = db.query("SELECT 1", &[])?;
    Ok(Response::new(200, format!("{} rows\n", rows.rows.len())))
}
