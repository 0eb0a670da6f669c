//! OCI lifecycle hooks, run as runc runs them.
//!
//! Docker wires a container's network through a `prestart` hook (`libnetwork-setkey`), which
//! moves the veth into the network namespace of the PID in the state it is given; CNI-less
//! setups and tools like the NVIDIA toolkit do the same. Here that PID is the sandbox's: its
//! namespaces are the container's. Hooks that must run inside the container's mount namespace
//! (`createContainer`, `startContainer`) have no process to run in and are refused at create.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use oci_spec::runtime::{ContainerState, Hook, Hooks, Spec, State, StateBuilder};
use tokio::io::AsyncWriteExt;

/// When hooks run, in the runtime's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// At create, after the sandbox exists and before the guest is prepared: `prestart`
    /// (deprecated, still Docker's) then `createRuntime`.
    Create,
    /// After the guest started; failures are logged, as the spec says.
    Poststart,
    /// After the container is deleted; failures are logged.
    Poststop,
}

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook could not be started or fed its state.
    #[error("cannot run the {stage} hook {path}")]
    Spawn {
        /// `prestart`, `createRuntime`, ...
        stage: &'static str,
        /// The hook's path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The hook exited non-zero.
    #[error("the {stage} hook {path} failed ({status}): {stderr}")]
    Failed {
        /// `prestart`, `createRuntime`, ...
        stage: &'static str,
        /// The hook's path.
        path: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// What it printed.
        stderr: String,
    },
    /// The hook ran past its timeout and was killed.
    #[error("the {stage} hook {path} did not finish within {timeout:?}")]
    TimedOut {
        /// `prestart`, `createRuntime`, ...
        stage: &'static str,
        /// The hook's path.
        path: String,
        /// Its timeout.
        timeout: Duration,
    },
}

/// A container's hooks and the state they are fed, taken from its spec at create and kept
/// until delete. Containers without hooks have none (see [`Lifecycle::of`]).
pub struct Lifecycle {
    hooks: Hooks,
    id: String,
    bundle: PathBuf,
    version: String,
    annotations: HashMap<String, String>,
}

impl Lifecycle {
    /// The lifecycle of container `id`, if its spec has hooks; the hook kinds that must run
    /// inside the container have no process to run in and are refused with what they are.
    pub fn of(spec: &Spec, id: &str, bundle: &Path) -> Result<Option<Lifecycle>, &'static str> {
        let Some(hooks) = spec.hooks() else {
            return Ok(None);
        };
        let inside = [
            (hooks.create_container(), "createContainer hooks"),
            (hooks.start_container(), "startContainer hooks"),
        ];
        if let Some((_, what)) = inside
            .into_iter()
            .find(|(list, _)| list.as_ref().is_some_and(|h| !h.is_empty()))
        {
            return Err(what);
        }
        Ok(Some(Lifecycle {
            hooks: hooks.clone(),
            id: id.to_owned(),
            bundle: bundle.to_owned(),
            version: spec.version().clone(),
            annotations: spec.annotations().clone().unwrap_or_default(),
        }))
    }

    /// Runs the hooks of `stage` in order, each fed the container's state with `pid`. Stops
    /// at the first failure.
    pub async fn run(&self, stage: Stage, pid: u32) -> Result<(), HookError> {
        let hooks = &self.hooks;
        #[allow(deprecated)]
        let lists: Vec<(&'static str, &Option<Vec<Hook>>, ContainerState)> = match stage {
            Stage::Create => vec![
                ("prestart", hooks.prestart(), ContainerState::Created),
                (
                    "createRuntime",
                    hooks.create_runtime(),
                    ContainerState::Created,
                ),
            ],
            Stage::Poststart => vec![("poststart", hooks.poststart(), ContainerState::Running)],
            Stage::Poststop => vec![("poststop", hooks.poststop(), ContainerState::Stopped)],
        };
        for (name, list, status) in lists {
            let Some(list) = list.as_deref().filter(|list| !list.is_empty()) else {
                continue;
            };
            let state = self.state(pid, status);
            for hook in list {
                run_one(name, hook, &state).await?;
            }
        }
        Ok(())
    }

    fn state(&self, pid: u32, status: ContainerState) -> Vec<u8> {
        let state: State = StateBuilder::default()
            .version(self.version.clone())
            .id(self.id.clone())
            .status(status)
            .pid(pid as i32)
            .bundle(self.bundle.clone())
            .annotations(self.annotations.clone())
            .build()
            .expect("every field is set");
        serde_json::to_vec(&state).expect("state serializes")
    }
}

async fn run_one(stage: &'static str, hook: &Hook, state: &[u8]) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let spawn_err = |source| HookError::Spawn {
        stage,
        path: path.clone(),
        source,
    };
    let mut command = tokio::process::Command::new(hook.path());
    let args = hook.args().as_deref().unwrap_or_default();
    if let Some((arg0, rest)) = args.split_first() {
        command.arg0(arg0).args(rest);
    }
    // Exactly the hook's env, as runc gives it.
    command.env_clear();
    for (key, value) in hook
        .env()
        .iter()
        .flatten()
        .filter_map(|v| v.split_once('='))
    {
        command.env(key, value);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    let mut stdin = child.stdin.take().expect("piped");
    // A hook that does not read its state is not an error.
    let _ = stdin.write_all(state).await;
    drop(stdin);
    let finished = child.wait_with_output();
    let output = match hook.timeout().filter(|t| *t > 0) {
        Some(seconds) => {
            let timeout = Duration::from_secs(seconds as u64);
            tokio::time::timeout(timeout, finished)
                .await
                .map_err(|_| HookError::TimedOut {
                    stage,
                    path: path.clone(),
                    timeout,
                })?
        }
        None => finished.await,
    }
    .map_err(spawn_err)?;
    if !output.status.success() {
        return Err(HookError::Failed {
            stage,
            path,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}
