//! A module without `_start`: the image names its entry as `/reactor.wasm#greet`.

/// The entry function, called after the module's `_initialize`.
#[unsafe(no_mangle)]
pub extern "C" fn greet() {
    println!("greetings from greet");
    for arg in std::env::args().skip(1) {
        println!("arg: {arg}");
    }
}
