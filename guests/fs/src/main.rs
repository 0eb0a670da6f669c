//! Filesystem probe: reads, lists and writes paths, printing what the sandbox allowed.
//!
//! `fs cat PATH`, `fs ls DIR`, `fs write PATH TEXT`. Every failure prints `fs: OP PATH: ERROR`
//! on stderr and exits 1, so tests can tell a denied path from a missing one.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["cat", path] => std::fs::read_to_string(path).map(|text| print!("{text}")),
        ["ls", path] => std::fs::read_dir(path).map(|entries| {
            let mut names: Vec<String> = entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names {
                println!("{name}");
            }
        }),
        ["write", path, text] => std::fs::write(path, text).map(|()| println!("wrote {path}")),
        _ => {
            eprintln!("usage: fs cat PATH | fs ls DIR | fs write PATH TEXT");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fs: {} {}: {error}", args[0], args[1]);
            ExitCode::FAILURE
        }
    }
}
