//! Image names as Docker normalises them: `myapp`, `myapp:latest` and
//! `docker.io/library/myapp:latest` are one image, kept in the local store under its familiar
//! form (`myapp:latest`, `127.0.0.1:5000/app:v1`), as `docker images` shows it.
//!
//! What Docker does not do here is pull a short name from Docker Hub behind the user's back:
//! a name with no registry is looked for in the local store only, and the error says how to
//! pull it when that is what was meant.

use anyhow::{Result, bail};
use wasmcell_registry::parse_reference;

/// The familiar form of `reference`, checked: a reference Docker would refuse (`Bad Tag`, an
/// upper-case repository) is refused here with the form expected.
pub fn familiar(reference: &str) -> Result<String> {
    let parsed = match parse_reference(reference) {
        Ok(parsed) => parsed,
        Err(error) => bail!(
            "{error}: an image name is [REGISTRY/]REPOSITORY[:TAG] in lower case, such as myapp or 127.0.0.1:5000/myapp:1"
        ),
    };
    let repository = parsed.repository();
    let mut name = match parsed.registry() {
        "docker.io" | "index.docker.io" => repository
            .strip_prefix("library/")
            .unwrap_or(repository)
            .to_owned(),
        registry => format!("{registry}/{repository}"),
    };
    if let Some(tag) = parsed.tag() {
        name.push(':');
        name.push_str(tag);
    }
    if let Some(digest) = parsed.digest() {
        name.push('@');
        name.push_str(digest);
    }
    Ok(name)
}

/// Whether `reference` names no registry (`myapp`, `library/myapp:1`): Docker would take it
/// from Docker Hub.
pub fn is_short(reference: &str) -> bool {
    match reference.split_once('/') {
        None => true,
        Some((first, _)) => !(first.contains(['.', ':']) || first == "localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_as_docker_normalises_them() {
        for (written, familiar_form) in [
            ("myapp", "myapp:latest"),
            ("myapp:1", "myapp:1"),
            ("docker.io/library/myapp", "myapp:latest"),
            ("docker.io/me/app:2", "me/app:2"),
            ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
            ("example.com/a/b:v1", "example.com/a/b:v1"),
        ] {
            assert_eq!(familiar(written).unwrap(), familiar_form, "{written}");
        }
        for bad in ["Bad Tag", "MyApp", "app:bad tag", "example.com/app:"] {
            let error = familiar(bad).unwrap_err().to_string();
            assert!(error.contains("in lower case"), "{bad}: {error}");
        }
    }

    #[test]
    fn short_names_name_no_registry() {
        for short in ["myapp", "myapp:1", "me/app"] {
            assert!(is_short(short), "{short}");
        }
        for full in ["example.com/app", "127.0.0.1:5000/app", "localhost/app"] {
            assert!(!is_short(full), "{full}");
        }
    }
}
