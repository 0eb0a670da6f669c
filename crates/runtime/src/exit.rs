//! How a guest run ends, and the exit status each ending is reported with.

use wasmtime_wasi::I32Exit;

use crate::store::{Limiter, Overrun};

/// The exit status a trap is reported with: what a native process that aborts gets (128 + SIGABRT),
/// and what `wasmtime run` exits with on a trap.
const TRAP_STATUS: u32 = 134;

/// The exit status of a guest that exceeded its memory limit: what a process killed by the OOM
/// killer reports (128 + SIGKILL).
const OUT_OF_MEMORY_STATUS: u32 = 137;

/// How a guest run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The guest returned or exited with this code.
    Code(i32),
    /// The guest trapped; the message (with its wasm backtrace) was also written to its stderr.
    Trapped(String),
    /// The guest failed without trapping: a host call refused to go on (such as `proc_exit`
    /// with a status WASI does not allow, 126 or more). Status 1, as `wasmtime run` exits;
    /// the message was also written to its stderr.
    Failed(String),
    /// The guest tried to hold more memory than it may (see [`Overrun`]).
    OutOfMemory(Overrun),
}

impl Exit {
    /// The process exit status this corresponds to, as `wasmtime run` exits: the code's low 8
    /// bits as on Linux, 134 (128 + SIGABRT) for a trap, 1 for a failure that is not one, 137
    /// for an overrun of the memory limit or of a table's size.
    pub fn status(&self) -> u32 {
        match self {
            Exit::Code(code) => (*code as u32) & 0xff,
            Exit::Trapped(_) => TRAP_STATUS,
            Exit::Failed(_) => 1,
            Exit::OutOfMemory(_) => OUT_OF_MEMORY_STATUS,
        }
    }

    /// How a run that returned `result` ended, its store's limits having seen what `limiter`
    /// saw.
    pub fn of(result: wasmtime::Result<()>, limiter: &Limiter) -> Exit {
        match (result, limiter.overrun()) {
            (Ok(()), _) => Exit::Code(0),
            (Err(_), Some(overrun)) => Exit::OutOfMemory(overrun),
            (Err(error), None) => match error.downcast_ref::<I32Exit>() {
                Some(I32Exit(code)) => Exit::Code(*code),
                None if error.downcast_ref::<wasmtime::Trap>().is_some() => {
                    Exit::Trapped(format!("guest trapped: {error:?}"))
                }
                None => Exit::Failed(format!("guest failed: {error:#}")),
            },
        }
    }

    /// How a `wasi:cli/run` call that returned `result` ended.
    pub fn of_run(result: wasmtime::Result<Result<(), ()>>, limiter: &Limiter) -> Exit {
        match result {
            Ok(Ok(())) => Exit::Code(0),
            Ok(Err(())) => Exit::Code(1),
            Err(error) => Exit::of(Err(error), limiter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controls::Controls;
    use wasmcell_workload::Limits;

    const MIB: usize = 1 << 20;

    /// What a guest does: 8 memories grown to 48 MiB each, or a 40M-element table, end it as
    /// out of memory (137).
    #[test]
    fn a_module_growing_many_memories_or_a_big_table_ends_with_137() {
        let engine = wasmtime::Engine::default();
        let memories: String = (0..8)
            .map(|i| format!("(memory $m{i} 0)"))
            .collect::<Vec<_>>()
            .join(" ");
        let grow_all: String = (0..8)
            .map(|i| {
                format!("(if (i32.lt_s (memory.grow $m{i} (i32.const 768)) (i32.const 0)) (then unreachable))")
            })
            .collect::<Vec<_>>()
            .join(" ");
        let memories = format!(r#"(module {memories} (func (export "_start") {grow_all}))"#);
        let table = r#"(module (table $t 0 funcref)
            (func (export "_start")
              (if (i32.lt_s (table.grow $t (ref.null func) (i32.const 40000000)) (i32.const 0))
                (then unreachable))))"#;
        for (wat, limit, expected) in [
            (
                memories.as_str(),
                Some(64 * MIB),
                Overrun::MemoryLimit(64 * MIB as u64),
            ),
            (table, Some(64 * MIB), Overrun::MemoryLimit(64 * MIB as u64)),
            (table, None, Overrun::TableElements),
        ] {
            let module = wasmtime::Module::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
            let controls = Controls::new(&Limits {
                memory: limit.map(|m| m as u64),
                cpu: None,
            });
            let mut store = wasmtime::Store::new(&engine, Limiter::new(controls));
            store.limiter(|limiter| limiter);
            let result = wasmtime::Instance::new(&mut store, &module, &[]).and_then(|instance| {
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call(&mut store, ())
            });
            let exit = Exit::of(result, store.data());
            assert_eq!(exit, Exit::OutOfMemory(expected), "{wat}");
            assert_eq!(exit.status(), 137);
        }
    }

    #[test]
    fn a_run_that_returns_an_error_exits_1() {
        let limiter = Limiter::new(Controls::new(&Limits::default()));
        assert_eq!(Exit::of_run(Ok(Ok(())), &limiter), Exit::Code(0));
        assert_eq!(Exit::of_run(Ok(Err(())), &limiter), Exit::Code(1));
        let exited = Exit::of_run(Err(I32Exit(3).into()), &limiter);
        assert_eq!(exited, Exit::Code(3));
        assert_eq!(Exit::Failed("x".into()).status(), 1);
        assert_eq!(Exit::Code(-1).status(), 255);
    }
}
