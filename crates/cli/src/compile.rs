//! How the CLI compiles: the compile cache it opens (bounded as `WASMCELL_CACHE_MAX_SIZE`
//! says), the engine `run` and `up` prepare with, and which app a compile is for (the scope of
//! its function cache).

use std::path::PathBuf;

use anyhow::{Context, Result};
use wasmcell_engine::{CompileCache, CompilePolicy, Engine, MAX_SIZE_ENV};

/// The cache `run` and `up` compile through: in `dir` or the default one, bounded as
/// WASMCELL_CACHE_MAX_SIZE says.
pub fn open(dir: Option<PathBuf>) -> Result<CompileCache> {
    let max_size = CompileCache::max_size_from_env().context(MAX_SIZE_ENV)?;
    Ok(CompileCache::new(dir.unwrap_or_else(CompileCache::default_dir)).max_size(max_size))
}

/// The engine `run` and `up` prepare with: compiling through [`open`]'s cache, each miss in a
/// child process (bounded, and its memory gone with it, so a server that compiled weighs what
/// one started from the cache weighs), reusing the functions earlier compiles of the app
/// `target` names made ([`app_scope`]), as `policy` (else `WASMCELL_COMPILE`) says.
pub fn engine(dir: Option<PathBuf>, policy: Option<CompilePolicy>, target: &str) -> Result<Engine> {
    let policy = match policy {
        Some(policy) => policy,
        None => CompilePolicy::from_env().context(CompilePolicy::ENV)?,
    };
    let cache = open(dir)?
        .compiling_in_own_child()
        .functions_of(&app_scope(target));
    Ok(Engine::new(cache, policy)?)
}

/// The app `target` names, whose compiles share a function cache: a file or directory by its
/// canonical path, an image reference by its repository (so its tags and digests share one).
/// An image's compile reaches no other app's functions: what it writes there is code.
pub fn app_scope(target: &str) -> String {
    if let Ok(path) = std::fs::canonicalize(target) {
        return format!("path:{}", path.display());
    }
    let name = target.split('@').next().unwrap_or(target);
    let repository = match name.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => name,
    };
    format!("image:{repository}")
}

#[cfg(test)]
mod tests {
    use super::app_scope;

    #[test]
    fn an_images_tags_and_digests_share_a_scope_and_other_apps_do_not() {
        let repository = app_scope("127.0.0.1:5000/team/app:v1");
        assert_eq!(repository, "image:127.0.0.1:5000/team/app");
        assert_eq!(app_scope("127.0.0.1:5000/team/app:v2"), repository);
        assert_eq!(app_scope("127.0.0.1:5000/team/app"), repository);
        assert_eq!(app_scope("127.0.0.1:5000/team/app@sha256:0123"), repository);
        assert_ne!(app_scope("127.0.0.1:5000/team/other:v1"), repository);
        let dir = tempfile::tempdir().unwrap();
        let scope = app_scope(dir.path().to_str().unwrap());
        assert!(scope.starts_with("path:/"), "{scope}");
        assert_ne!(scope, app_scope("/"));
    }
}
