//! The database fixtures themselves: a private PostgreSQL and a private MariaDB (Debian 12's,
//! extracted by scripts/setup.sh) each start on a loopback port, take a password over TCP (and
//! refuse a wrong one), keep a row written through their client, and leave no process behind
//! when dropped. The outbound database tests rely on all of that.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, ensure};
use wasmcell_e2e::{MariaDb, Postgres};

/// The PIDs of `pid`'s children, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
            let (_, rest) = stat.rsplit_once(')')?;
            let parent: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (parent == pid).then_some(child)
        })
        .collect()
}

/// Whether a process `pid` exists.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn postgres_keeps_a_row_and_leaves_no_process() -> Result<()> {
    let started = Instant::now();
    let postgres = Postgres::start()?;
    eprintln!("PostgreSQL started in {:?}", started.elapsed());
    postgres
        .psql("CREATE TABLE pets (id integer PRIMARY KEY, name text NOT NULL)")?
        .success()?;
    postgres
        .psql("INSERT INTO pets VALUES (1, 'Rex'), (2, 'Tom')")?
        .success()?;
    let rows = postgres
        .psql("SELECT id, name FROM pets ORDER BY id")?
        .success()?;
    ensure!(rows.stdout == "1|Rex\n2|Tom\n", "rows: {rows:?}");
    // The URL a guest is given works as well, and the password is checked.
    let count = postgres
        .psql_at(&postgres.url(), "SELECT count(*) FROM pets")?
        .success()?;
    ensure!(count.stdout == "2\n", "count: {count:?}");
    let wrong = postgres.psql_at(
        &postgres
            .address()
            .replace("password=wasmcell", "password=wrong"),
        "SELECT 1",
    )?;
    ensure!(
        wrong.code != Some(0) && wrong.stderr.contains("password authentication failed"),
        "a wrong password: {wrong:?}"
    );

    let (pid, workers) = (postgres.pid(), children(postgres.pid()));
    ensure!(!workers.is_empty(), "no worker processes of {pid}");
    drop(postgres);
    ensure!(!alive(pid), "postgres {pid} still runs");
    let left: Vec<_> = workers.into_iter().filter(|&w| alive(w)).collect();
    ensure!(left.is_empty(), "postgres' workers still run: {left:?}");
    Ok(())
}

#[test]
fn mariadb_keeps_a_row_and_leaves_no_process() -> Result<()> {
    let started = Instant::now();
    let mariadb = MariaDb::start()?;
    eprintln!("MariaDB started in {:?}", started.elapsed());
    mariadb
        .sql("CREATE TABLE pets (id INT PRIMARY KEY, name TEXT NOT NULL)")?
        .success()?;
    mariadb
        .sql("INSERT INTO pets VALUES (1, 'Rex'), (2, 'Tom')")?
        .success()?;
    let rows = mariadb
        .sql("SELECT id, name FROM pets ORDER BY id")?
        .success()?;
    ensure!(rows.stdout == "1\tRex\n2\tTom\n", "rows: {rows:?}");
    let engine = mariadb
        .sql("SELECT engine FROM information_schema.tables WHERE table_name = 'pets'")?
        .success()?;
    ensure!(engine.stdout == "InnoDB\n", "engine: {engine:?}");
    let charset = mariadb
        .sql("SELECT @@character_set_database, @@collation_database")?
        .success()?;
    ensure!(
        charset.stdout == "utf8mb4\tutf8mb4_general_ci\n",
        "database character set: {charset:?}"
    );
    // The password is checked, and root has no password login over TCP.
    let wrong = mariadb.sql_as(MariaDb::USER, "wrong", "SELECT 1")?;
    ensure!(
        wrong.code != Some(0) && wrong.stderr.contains("Access denied"),
        "a wrong password: {wrong:?}"
    );
    let root = mariadb.sql_as("root", "", "SELECT 1")?;
    ensure!(
        root.code != Some(0) && root.stderr.contains("Access denied"),
        "root over TCP: {root:?}"
    );

    let pid = mariadb.pid();
    drop(mariadb);
    ensure!(!alive(pid), "mariadbd {pid} still runs");
    Ok(())
}
