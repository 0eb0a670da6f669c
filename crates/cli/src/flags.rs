//! The values of the flags `run` takes from Docker's and wasmtime's habits: `--env-file`,
//! `--memory`, `--cpus`, `--workdir`, `--dir`/`--volume`, `--env`, parsed as those tools parse
//! them, with errors that say the form expected.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use wasmcell_engine::{Access, CpuQuota, Preopen};

/// The period `--cpus` is a share of, in microseconds (Docker's and the CFS default).
const CPU_PERIOD_US: u64 = 100_000;

/// `--env-file FILE`, as `docker run --env-file` reads it: a `KEY=VALUE` or a bare `KEY` (the
/// value it has here) per line; blank lines and lines starting with `#` are skipped; nothing is
/// unquoted or expanded.
pub fn env_file(file: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--env-file {}: cannot read it", file.display()))?;
    let mut vars = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split('=').next().unwrap_or_default();
        if line.starts_with('=') || key.contains(char::is_whitespace) {
            bail!(
                "--env-file {} line {}: `{line}` is not KEY=VALUE (a name holds no spaces)",
                file.display(),
                number + 1
            );
        }
        vars.push(line.to_owned());
    }
    Ok(vars)
}

/// `--memory SIZE`, as Docker reads it ([`wasmcell_engine::parse_memory_size`]: `512m`,
/// `1.5GiB`); at least 6 MiB, Docker's own floor.
pub fn memory(size: &str) -> Result<u64> {
    let bytes = wasmcell_engine::parse_memory_size(size).map_err(|_| {
        anyhow::anyhow!(
            "--memory {size}: expected a size such as 512m or 1g (b, k, m, g, t; 1024s)"
        )
    })?;
    if bytes < 6 << 20 {
        bail!("--memory {size}: the minimum is 6m, as with Docker");
    }
    Ok(bytes)
}

/// `--cpus N`, as Docker reads it: a share of CPUs (`0.5`, `1.5`), from 0.01 to the CPUs this
/// machine has.
pub fn cpus(cpus: &str) -> Result<CpuQuota> {
    let have = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share: f64 = cpus
        .parse()
        .ok()
        .filter(|share: &f64| share.is_finite())
        .with_context(|| format!("--cpus {cpus}: expected a number of CPUs, such as 0.5 or 2"))?;
    if !(0.01..=have as f64).contains(&share) {
        bail!("--cpus {cpus}: the range is 0.01 to {have}, as there are {have} CPUs here");
    }
    Ok(CpuQuota {
        quota_us: (share * CPU_PERIOD_US as f64).round() as u64,
        period_us: CPU_PERIOD_US,
    })
}

/// `--workdir DIR`: the guest's working directory, an absolute path as Docker requires.
pub fn workdir(dir: &str) -> Result<String> {
    if !dir.starts_with('/') {
        bail!("--workdir {dir}: the working directory must be an absolute path, such as /app");
    }
    Ok(dir.to_owned())
}

/// `--dir`/`-v`/`--volume`: `HOST[:GUEST][:ro]`, or wasmtime's `HOST::GUEST`.
pub fn dir(dir: &str) -> Result<Preopen> {
    // Docker's options after the guest path: `ro`/`rw`, and SELinux's `z`/`Z`, which mean
    // nothing here (comma-separated).
    let (rest, access) = match dir.rsplit_once(':') {
        Some((rest, options))
            if !options.is_empty()
                && options
                    .split(',')
                    .all(|o| matches!(o, "ro" | "rw" | "z" | "Z")) =>
        {
            let access = match options.split(',').any(|o| o == "ro") {
                true => Access::ReadOnly,
                false => Access::ReadWrite,
            };
            (rest, access)
        }
        _ => (dir, Access::ReadWrite),
    };
    // wasmtime's own form, `HOST::GUEST`, first: split at the first `:`, it would mount at
    // `:GUEST`.
    let (host, guest) = rest
        .split_once("::")
        .or_else(|| rest.split_once(':'))
        .unwrap_or((rest, rest));
    if guest.starts_with(':') || guest.is_empty() {
        bail!(
            "--dir {dir}: the guest path `{guest}` is not one: write HOST[:GUEST][:ro] (or wasmtime's HOST::GUEST)"
        );
    }
    let host = PathBuf::from(host);
    if !host.is_dir() {
        let hint = match host.components().count() {
            // Docker's `-v NAME:/path` is a named volume; there are none without an engine.
            1 if !host.is_absolute() && !dir.starts_with('.') => {
                " (named volumes need a container engine: give a directory's path, such as ./data)"
            }
            _ => "",
        };
        bail!("--dir {dir}: {} is not a directory{hint}", host.display());
    }
    Ok(Preopen {
        host,
        guest: guest.to_owned(),
        access,
    })
}

/// `--env` of `up`: `KEY=VALUE`s only.
pub fn env(vars: &[String]) -> Result<Vec<(String, String)>> {
    vars.iter()
        .map(|var| match var.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => bail!("environment variable `{var}` is not KEY=VALUE"),
        })
        .collect()
}

/// The user's `--env` (and `--env-file`) values: `KEY=VALUE`, or a bare `KEY` taking the
/// value it has in this process's environment, as `docker run -e KEY` does (a key it does not
/// have stays unset). Only for the user's own flags: an image's `Env` must never name a host
/// variable and have its value passed to the guest.
pub fn env_flags(vars: &[String]) -> Result<Vec<(String, String)>> {
    env_with(vars, |key| std::env::var(key).ok())
}

/// `KEY=VALUE`s, a bare `KEY` taking its value from `host`, if it has one.
pub fn env_with(
    vars: &[String],
    host: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    for var in vars {
        match var.split_once('=') {
            Some((key, value)) if !key.is_empty() => env.push((key.to_owned(), value.to_owned())),
            None if !var.is_empty() => {
                if let Some(value) = host(var) {
                    env.push((var.clone(), value));
                }
            }
            _ => bail!("environment variable `{var}` is not KEY=VALUE"),
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_forms() {
        let tmp = std::env::temp_dir();
        let t = tmp.display();
        let p = dir(&format!("{t}")).unwrap();
        assert_eq!(
            (p.guest.as_str(), p.access),
            (t.to_string().as_str(), Access::ReadWrite)
        );
        let p = dir(&format!("{t}:/data:ro")).unwrap();
        assert_eq!((p.guest.as_str(), p.access), ("/data", Access::ReadOnly));
        let p = dir(&format!("{t}:/data:rw")).unwrap();
        assert_eq!((p.guest.as_str(), p.access), ("/data", Access::ReadWrite));
        let p = dir(&format!("{t}:/data:ro,z")).unwrap();
        assert_eq!((p.guest.as_str(), p.access), ("/data", Access::ReadOnly));
        let p = dir(&format!("{t}:/data:Z")).unwrap();
        assert_eq!((p.guest.as_str(), p.access), ("/data", Access::ReadWrite));
        // wasmtime's form.
        let p = dir(&format!("{t}::/data")).unwrap();
        assert_eq!((p.guest.as_str(), p.access), ("/data", Access::ReadWrite));
        let error = |d: &str| dir(d).unwrap_err().to_string();
        assert!(error(&format!("{t}:::/data")).contains("is not one"));
        assert!(error("/no/such/dir:/x").contains("is not a directory"));
        assert!(error("myvolume:/data").contains("named volumes"));
    }

    #[test]
    fn env_forms() {
        assert_eq!(
            env(&["A=1".into(), "B=".into()]).unwrap(),
            [("A".into(), "1".into()), ("B".into(), String::new())]
        );
        assert!(env(&["NOVALUE".into()]).is_err());
        assert!(env(&["=x".into()]).is_err());
        let host = |key: &str| (key == "HOME").then(|| "/root".to_owned());
        assert_eq!(
            env_with(&["HOME".into(), "UNSET".into()], host).unwrap(),
            [("HOME".into(), "/root".into())]
        );
    }

    #[test]
    fn memory_sizes_as_docker_reads_them() {
        assert_eq!(memory("64m").unwrap(), 64 << 20);
        assert_eq!(memory("1G").unwrap(), 1 << 30);
        assert_eq!(memory("1.5g").unwrap(), 3 << 29);
        assert_eq!(memory("8192kb").unwrap(), 8 << 20);
        assert_eq!(memory("10485760").unwrap(), 10 << 20);
        assert_eq!(memory("512MiB").unwrap(), 512 << 20);
        assert_eq!(memory("1 g").unwrap(), 1 << 30);
        assert_eq!(memory("1t").unwrap(), 1 << 40);
        for bad in ["", "m", "12x", "1mm", "1bb", "-5m", "1e400g", "1ib"] {
            assert!(memory(bad).is_err(), "{bad}");
        }
        assert!(
            memory("4m")
                .unwrap_err()
                .to_string()
                .contains("minimum is 6m")
        );
    }

    #[test]
    fn cpus_as_docker_reads_them() {
        let half = cpus("0.5").unwrap();
        assert_eq!((half.quota_us, half.period_us), (50_000, 100_000));
        for bad in ["0", "0.001", "-1", "NaN", "inf", "two", "100000"] {
            assert!(cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_files_as_docker_reads_them() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("app.env");
        std::fs::write(
            &file,
            "# a comment\n\nA=1\nB=two words\n  HOME\nC=\"quoted\"\n",
        )
        .unwrap();
        assert_eq!(
            env_file(&file).unwrap(),
            ["A=1", "B=two words", "HOME", "C=\"quoted\""]
        );
        std::fs::write(&file, "A B=1\n").unwrap();
        assert!(env_file(&file).unwrap_err().to_string().contains("line 1"));
        std::fs::write(&file, "\u{feff}A=1\n").unwrap();
        assert_eq!(env_file(&file).unwrap(), ["A=1"]);
        std::fs::write(&file, "A\tB=1\n").unwrap();
        assert!(env_file(&file).is_err());
        assert!(env_file(&tmp.path().join("none")).is_err());
    }

    #[test]
    fn workdirs_are_absolute() {
        assert_eq!(workdir("/app").unwrap(), "/app");
        assert!(workdir("app").unwrap_err().to_string().contains("absolute"));
    }
}
