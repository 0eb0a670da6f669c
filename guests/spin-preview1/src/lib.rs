//! A Spin HTTP component built as the SDKs of Spin 2 and 3 built them, for `wasm32-wasi`
//! (preview 1): a core module importing Spin's interfaces through the component model's ABI,
//! which the host turns into a component with WASI's preview 1 adapter when it loads the app.
//!
//! `GET /...`: a greeting from the `greeting` variable, and a visit count kept in the `default`
//! key-value store.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;

#[http_component]
fn handle(request: Request) -> anyhow::Result<impl IntoResponse> {
    let greeting = spin_sdk::variables::get("greeting")?;
    let store = Store::open_default()?;
    let visits = store
        .get("visits")?
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    store.set("visits", visits.to_string().as_bytes())?;
    Ok(Response::builder()
        .status(200)
        .header("content-type", "text/plain")
        .body(format!(
            "{greeting} from a preview 1 module: {} visit {visits}\n",
            request.path()
        ))
        .build())
}
