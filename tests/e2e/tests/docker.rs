//! Docker Engine 26 (containerd image store) loading and running images built by wasmcell.

use anyhow::Result;
use wasmcell_e2e::{Docker, build_image, guest};

#[test]
fn docker_loads_a_built_image_and_runs_it_with_the_wasmtime_runtime() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let docker = Docker::start()?;
    for platform in ["wasi/wasm32", "wasip1/wasm"] {
        let tag = format!("example.com/hello-{}:latest", platform.replace('/', "-"));
        let archive = build_image(
            &guest("hello.wasm"),
            &tag,
            tmp.path(),
            &["--platform", platform],
        )?;
        let loaded = docker
            .docker(&["load", "--input", archive.to_str().unwrap()])?
            .success()?;
        assert!(
            loaded.stdout.contains(&format!("Loaded image: {tag}")),
            "{loaded:?}"
        );

        // As with any image: arguments replace Cmd and follow the Entrypoint.
        let out = docker.docker(&[
            "run",
            "--rm",
            "--runtime=io.containerd.wasmtime.v1",
            &format!("--platform={platform}"),
            &tag,
            "from-docker",
            "exit=5",
        ])?;
        assert_eq!(out.code, Some(5), "{out:?}");
        assert_eq!(
            out.stdout, "Hello from Wasm!\narg: from-docker\n",
            "{out:?}"
        );
    }
    Ok(())
}
