//! Prints what slight's configs interface answers: `GREETING` and `HOME` from `configs.envvars`
//! (named `env`), a value the app sets there, the `token` secret from `configs.usersecrets`
//! (named `secrets`), and an undeclared source.

use abi02::Error;
use abi02::slight::Configs;

abi02::allocator!();

fn show(result: Result<Vec<u8>, Error>) -> String {
    match result {
        Ok(value) => String::from_utf8(value).unwrap(),
        Err(error) => error.to_string(),
    }
}

fn main() {
    let env = Configs::open("env").unwrap();
    println!("GREETING: {}", show(env.get("GREETING")));
    println!("HOME: {}", show(env.get("HOME")));
    env.set("COLOR", b"blue").unwrap();
    println!("COLOR: {}", show(env.get("COLOR")));
    match Configs::open("secrets") {
        Ok(secrets) => {
            println!("token: {}", show(secrets.get("token")));
            println!("set secret: {}", secrets.set("token", b"x").unwrap_err());
        }
        Err(error) => println!("secrets: {error}"),
    }
    match Configs::open("nope") {
        Ok(_) => println!("nope: opened"),
        Err(error) => println!("nope: {}", error.case),
    }
}
