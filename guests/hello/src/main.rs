//! Prints a greeting and its arguments; the test guest for args, env, stdio and exit codes.
//!
//! Each argument is an instruction, applied in order:
//! `env` prints the whole environment as `KEY=VALUE` lines, `stderr=TEXT` writes TEXT to stderr,
//! `stdin` echoes each line of stdin as `stdin: LINE` until end of input or a line `exit` (an
//! interactive session), `exit=N` exits with status N after everything else, any other word is
//! echoed as `arg: WORD`.

use std::process::ExitCode;

fn main() -> ExitCode {
    println!("Hello from Wasm!");
    let mut status = 0u8;
    for arg in std::env::args().skip(1) {
        if arg == "env" {
            for (key, value) in std::env::vars() {
                println!("{key}={value}");
            }
        } else if arg == "stdin" {
            for line in std::io::stdin().lines() {
                let line = line.expect("stdin");
                if line == "exit" {
                    break;
                }
                println!("stdin: {line}");
            }
        } else if let Some(text) = arg.strip_prefix("stderr=") {
            eprintln!("{text}");
        } else if let Some(code) = arg.strip_prefix("exit=") {
            status = code.parse().expect("exit=N takes a number from 0 to 255");
        } else {
            println!("arg: {arg}");
        }
    }
    ExitCode::from(status)
}
