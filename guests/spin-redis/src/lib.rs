//! A Spin Redis-trigger component written with Spin's own SDK: it keeps the last message its
//! channel carried, and how many it has seen, in the app's `default` key-value store, where
//! the app's HTTP component reads them.

use bytes::Bytes;
use spin_sdk::key_value::Store;
use spin_sdk::redis_component;

#[redis_component]
fn on_message(message: Bytes) -> anyhow::Result<()> {
    let store = Store::open_default()?;
    let seen = store
        .get("count")?
        .and_then(|count| String::from_utf8(count).ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    store.set("last", &message)?;
    store.set("count", (seen + 1).to_string().as_bytes())?;
    println!("message {}: {} bytes", seen + 1, message.len());
    Ok(())
}
