//! The soak bench's CI variant: containers and pods created and removed over and over leave
//! nothing behind (`bench/run.sh soak N` runs the long version, with rates against runc).

use anyhow::Result;
use wasmcell_e2e::cri::Cri;
use wasmcell_e2e::soak::{import_sleeper_for_cri, pods, run_kill_delete, run_rm, settled};
use wasmcell_e2e::{CRI_NAMESPACE, Footprint, containerd_with};

const WASMTIME: Option<&str> = Some("io.containerd.wasmtime.v1");

#[test]
fn containers_and_pods_come_and_go_and_leave_nothing_behind() -> Result<()> {
    let images = [
        ("hello.wasm", "example.com/hello:latest"),
        ("sleeper.wasm", "example.com/sleeper:latest"),
    ];
    let (_tmp, containerd) = containerd_with(&[], &images)?;
    let namespace = containerd.namespace().to_owned();
    let before = Footprint::of(&containerd, &namespace)?;
    run_rm(&containerd, WASMTIME, "example.com/hello:latest", &[], 20)?;
    run_kill_delete(&containerd, WASMTIME, "example.com/sleeper:latest", &[], 20)?;
    settled(&before, || Footprint::of(&containerd, &namespace))?;

    let tmp = tempfile::tempdir()?;
    let cri = Cri::start()?;
    let image = import_sleeper_for_cri(&cri, tmp.path())?;
    let before = Footprint::of(cri.containerd(), CRI_NAMESPACE)?;
    pods(&cri, "wasmtime", (&image, &[]), 20, 5)?;
    settled(&before, || Footprint::of(cri.containerd(), CRI_NAMESPACE))?;
    Ok(())
}
