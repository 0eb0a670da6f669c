//! Counts its runs in the `my-container` bucket with `wasi:keyvalue`'s atomics (a bucket kept
//! in a volume counts across containers), and prints what the store, batch and `wasi:config`
//! answer, errors included.

wit_bindgen::generate!({ path: "wit", world: "app", generate_all });

use wasi::config::store as config;
use wasi::keyvalue::{atomics, batch, store};

fn main() {
    let bucket = store::open("my-container").expect("open my-container");
    let runs = atomics::increment(&bucket, "runs", 1).expect("increment");
    println!("runs: {runs}");
    bucket.set("greeting", b"hello").unwrap();
    let greeting = bucket.get("greeting").unwrap().unwrap();
    println!("greeting: {}", String::from_utf8(greeting).unwrap());
    batch::set_many(
        &bucket,
        &[("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())],
    )
    .unwrap();
    let many = batch::get_many(&bucket, &["a".into(), "zz".into()]).unwrap();
    println!("many: {many:?}");
    batch::delete_many(&bucket, &["a".into(), "b".into()]).unwrap();
    let mut keys = bucket.list_keys(None).unwrap().keys;
    keys.sort();
    println!("keys: {}", keys.join(","));
    println!("exists zz: {}", bucket.exists("zz").unwrap());
    match store::open("undeclared") {
        Ok(_) => println!("undeclared: opened"),
        Err(error) => println!("undeclared: {error:?}"),
    }
    println!("GREETING: {:?}", config::get("GREETING").unwrap());
    println!("HOME: {:?}", config::get("HOME").unwrap());
    println!("token: {:?}", config::get("token").unwrap());
}
