//! The command form of the app: `main` starts the server (see the library).

fn main() {
    if let Err(why) = slight_http::start() {
        panic!("cannot serve: {why}");
    }
}
