//! A long-running guest: prints `tick N` every second, for `ARG` seconds or forever.

use std::time::Duration;

fn main() {
    let seconds: Option<u64> = std::env::args().nth(1).map(|s| s.parse().expect("seconds"));
    println!("sleeper started");
    let mut tick = 0u64;
    while seconds.is_none_or(|limit| tick < limit) {
        std::thread::sleep(Duration::from_secs(1));
        tick += 1;
        println!("tick {tick}");
    }
    println!("sleeper done");
}
