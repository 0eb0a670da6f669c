//! The entrypoint syntax of Wasm images: `path[#function]`.

/// The function a core module runs when the entrypoint names none.
pub const DEFAULT_FUNCTION: &str = "_start";

/// A parsed entrypoint: the module's path and, for core modules, the export to call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    /// The path of the `.wasm` file, as written in the image (usually absolute in the rootfs).
    pub path: String,
    /// The export named after `#`, if any; `None` means the default (`_start` or `wasi:cli/run`).
    pub function: Option<String>,
}

impl Entrypoint {
    /// Splits `path#function`; an empty function (`app.wasm#`) counts as none, and a `#`
    /// followed by a `/` is part of a directory name, not a function.
    pub fn parse(arg0: &str) -> Entrypoint {
        match arg0
            .rsplit_once('#')
            .filter(|(_, function)| !function.contains('/'))
        {
            Some((path, function)) => Entrypoint {
                path: path.to_owned(),
                function: (!function.is_empty()).then(|| function.to_owned()),
            },
            None => Entrypoint {
                path: arg0.to_owned(),
                function: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_function() {
        let cases = [
            ("/app.wasm", "/app.wasm", None),
            ("/app.wasm#greet", "/app.wasm", Some("greet")),
            ("app.wasm#", "app.wasm", None),
            ("/dir#1/app.wasm#run", "/dir#1/app.wasm", Some("run")),
            ("/dir#1/app.wasm", "/dir#1/app.wasm", None),
        ];
        for (input, path, function) in cases {
            let e = Entrypoint::parse(input);
            assert_eq!(
                (e.path.as_str(), e.function.as_deref()),
                (path, function),
                "{input}"
            );
        }
    }
}
