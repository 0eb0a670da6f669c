//! Opens the store named by `STORE` (default `my-container`), counts this run under `runs`
//! (so a store kept in a volume counts across containers), and prints what each of keyvalue's
//! functions answers, errors included.

use abi02::slight::KeyValue;

abi02::allocator!();

fn main() {
    let name = std::env::var("STORE").unwrap_or_else(|_| "my-container".to_owned());
    let store = match KeyValue::open(&name) {
        Ok(store) => store,
        Err(error) => {
            eprintln!("open {name}: {error}");
            std::process::exit(1);
        }
    };
    let runs = match store.get("runs") {
        Ok(value) => String::from_utf8(value).unwrap().parse::<u64>().unwrap(),
        Err(error) if error.case == "key-not-found" => 0,
        Err(error) => panic!("get runs: {error}"),
    };
    store
        .set("runs", (runs + 1).to_string().as_bytes())
        .unwrap();
    println!("runs: {}", runs + 1);
    store.set("greeting", b"hello").unwrap();
    println!(
        "greeting: {}",
        String::from_utf8(store.get("greeting").unwrap()).unwrap()
    );
    let mut keys = store.keys().unwrap();
    keys.sort();
    println!("keys: {}", keys.join(","));
    store.delete("greeting").unwrap();
    println!("after delete: {}", store.get("greeting").unwrap_err());
    println!("empty key: {}", store.set("", b"x").unwrap_err());
    match KeyValue::open("undeclared") {
        Ok(_) => println!("undeclared: opened"),
        Err(error) => println!("undeclared: {}", error.case),
    }
}
