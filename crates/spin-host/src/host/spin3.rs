//! The interfaces Spin 3 added to its platform, which the current SDKs import: `spin:sqlite@3.0.0`
//! (the SDKs' `sqlite3`), `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch) and
//! `wasi:config@0.2.0-draft-2024-09-27`. They reach the same grants as Spin 2's: a bucket is
//! one of the component's key-value stores by label, a configuration value one of its variables,
//! a database one of its SQLite databases.

use wasmtime::component::Resource;

use super::spin::sqlite::sqlite as sqlite3;
use super::wasi::config::store as config;
use super::wasi::keyvalue::{atomics, batch, store};
use super::{
    DatabaseHandle, Outcome, SpinState, SpinStateExt, StoreHandle, check_value,
    fermyon::spin2_0_0::key_value, fermyon::spin2_0_0::sqlite as sqlite2,
};

/// A compare-and-swap in progress: the bucket, the key, and the value it was read with.
pub struct CasHandle {
    bucket: StoreHandle,
    key: String,
    seen: Option<Vec<u8>>,
}

impl From<key_value::Error> for store::Error {
    fn from(error: key_value::Error) -> store::Error {
        match error {
            key_value::Error::NoSuchStore => store::Error::NoSuchStore,
            key_value::Error::AccessDenied => store::Error::AccessDenied,
            key_value::Error::StoreTableFull => store::Error::Other("the store is full".to_owned()),
            key_value::Error::Other(other) => store::Error::Other(other),
        }
    }
}

impl From<sqlite2::Error> for sqlite3::Error {
    fn from(error: sqlite2::Error) -> sqlite3::Error {
        match error {
            sqlite2::Error::NoSuchDatabase => sqlite3::Error::NoSuchDatabase,
            sqlite2::Error::AccessDenied => sqlite3::Error::AccessDenied,
            sqlite2::Error::InvalidConnection => sqlite3::Error::InvalidConnection,
            sqlite2::Error::DatabaseFull => sqlite3::Error::DatabaseFull,
            sqlite2::Error::Io(io) => sqlite3::Error::Io(io),
        }
    }
}

impl store::Host for SpinState {
    async fn open(&mut self, identifier: String) -> Outcome<Resource<StoreHandle>, store::Error> {
        Ok(self.open_store(identifier).await?.map_err(Into::into))
    }
}

impl store::HostBucket for SpinState {
    async fn get(
        &mut self,
        this: Resource<StoreHandle>,
        key: String,
    ) -> Outcome<Option<Vec<u8>>, store::Error> {
        let bucket = self.table.get(&this)?;
        Ok(bucket.get(&key).await.map_err(store::Error::Other))
    }

    async fn set(
        &mut self,
        this: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Outcome<(), store::Error> {
        if let Err(too_large) = check_value(&value) {
            return Ok(Err(store::Error::Other(too_large)));
        }
        let bucket = self.table.get(&this)?;
        Ok(bucket.set(&key, &value).await.map_err(store::Error::Other))
    }

    async fn delete(
        &mut self,
        this: Resource<StoreHandle>,
        key: String,
    ) -> Outcome<(), store::Error> {
        let bucket = self.table.get(&this)?;
        Ok(bucket.delete(&key).await.map_err(store::Error::Other))
    }

    async fn exists(
        &mut self,
        this: Resource<StoreHandle>,
        key: String,
    ) -> Outcome<bool, store::Error> {
        let bucket = self.table.get(&this)?;
        Ok(bucket
            .get(&key)
            .await
            .map(|v| v.is_some())
            .map_err(store::Error::Other))
    }

    /// Every key at once: the cursor is never needed.
    async fn list_keys(
        &mut self,
        this: Resource<StoreHandle>,
        _cursor: Option<String>,
    ) -> Outcome<store::KeyResponse, store::Error> {
        let bucket = self.table.get(&this)?;
        Ok(bucket
            .keys()
            .await
            .map(|keys| store::KeyResponse { keys, cursor: None })
            .map_err(store::Error::Other))
    }

    async fn drop(&mut self, this: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl atomics::Host for SpinState {
    async fn increment(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
        delta: i64,
    ) -> Outcome<i64, store::Error> {
        let bucket = self.table.get(&bucket)?;
        Ok(bucket
            .increment(&key, delta)
            .await
            .map_err(store::Error::Other))
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> Outcome<(), atomics::CasError> {
        let store_error = |e: String| atomics::CasError::StoreError(store::Error::Other(e));
        if let Err(too_large) = check_value(&value) {
            return Ok(Err(store_error(too_large)));
        }
        let cas = self.table.delete(cas)?;
        match cas.bucket.swap(&cas.key, cas.seen.as_deref(), &value).await {
            Ok(true) => Ok(Ok(())),
            // Someone else wrote first: a fresh handle, with what is there now, to retry with.
            Ok(false) => {
                let seen = cas.bucket.get(&cas.key).await;
                let retry = CasHandle {
                    seen: match seen {
                        Ok(seen) => seen,
                        Err(error) => return Ok(Err(store_error(error))),
                    },
                    ..cas
                };
                Ok(Err(atomics::CasError::CasFailed(self.table.push(retry)?)))
            }
            Err(error) => Ok(Err(store_error(error))),
        }
    }
}

impl atomics::HostCas for SpinState {
    async fn new(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
    ) -> Outcome<Resource<CasHandle>, store::Error> {
        let bucket = self.table.get(&bucket)?.clone();
        let seen = match bucket.get(&key).await {
            Ok(seen) => seen,
            Err(error) => return Ok(Err(store::Error::Other(error))),
        };
        Ok(Ok(self.table.push(CasHandle { bucket, key, seen })?))
    }

    async fn current(
        &mut self,
        this: Resource<CasHandle>,
    ) -> Outcome<Option<Vec<u8>>, store::Error> {
        Ok(Ok(self.table.get(&this)?.seen.clone()))
    }

    async fn drop(&mut self, this: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl batch::Host for SpinState {
    async fn get_many(
        &mut self,
        bucket: Resource<StoreHandle>,
        keys: Vec<String>,
    ) -> Outcome<Vec<(String, Option<Vec<u8>>)>, store::Error> {
        let bucket = self.table.get(&bucket)?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            match bucket.get(&key).await {
                Ok(value) => values.push((key, value)),
                Err(error) => return Ok(Err(store::Error::Other(error))),
            }
        }
        Ok(Ok(values))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<StoreHandle>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Outcome<(), store::Error> {
        if let Some(Err(too_large)) = key_values
            .iter()
            .map(|(_, v)| check_value(v))
            .find(Result::is_err)
        {
            return Ok(Err(store::Error::Other(too_large)));
        }
        let bucket = self.table.get(&bucket)?;
        for (key, value) in key_values {
            if let Err(error) = bucket.set(&key, &value).await {
                return Ok(Err(store::Error::Other(error)));
            }
        }
        Ok(Ok(()))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<StoreHandle>,
        keys: Vec<String>,
    ) -> Outcome<(), store::Error> {
        let bucket = self.table.get(&bucket)?;
        for key in keys {
            if let Err(error) = bucket.delete(&key).await {
                return Ok(Err(store::Error::Other(error)));
            }
        }
        Ok(Ok(()))
    }
}

impl config::Host for SpinState {
    async fn get(&mut self, key: String) -> Outcome<Option<String>, config::Error> {
        Ok(Ok(self.host.variable(&key).cloned()))
    }

    async fn get_all(&mut self) -> Outcome<Vec<(String, String)>, config::Error> {
        Ok(Ok(self.host.all_variables()))
    }
}

/// Spin 3's parameters as Spin 2's, which the statements run with.
pub(super) fn to_v2(parameters: Vec<sqlite3::Value>) -> Vec<sqlite2::Value> {
    parameters
        .into_iter()
        .map(|v| match v {
            sqlite3::Value::Integer(i) => sqlite2::Value::Integer(i),
            sqlite3::Value::Real(r) => sqlite2::Value::Real(r),
            sqlite3::Value::Text(t) => sqlite2::Value::Text(t),
            sqlite3::Value::Blob(b) => sqlite2::Value::Blob(b),
            sqlite3::Value::Null => sqlite2::Value::Null,
        })
        .collect()
}

/// A statement's result as Spin 3 has it.
pub(super) fn from_v2(result: sqlite2::QueryResult) -> sqlite3::QueryResult {
    let value = |v| match v {
        sqlite2::Value::Integer(i) => sqlite3::Value::Integer(i),
        sqlite2::Value::Real(r) => sqlite3::Value::Real(r),
        sqlite2::Value::Text(t) => sqlite3::Value::Text(t),
        sqlite2::Value::Blob(b) => sqlite3::Value::Blob(b),
        sqlite2::Value::Null => sqlite3::Value::Null,
    };
    sqlite3::QueryResult {
        columns: result.columns,
        rows: result
            .rows
            .into_iter()
            .map(|row| sqlite3::RowResult {
                values: row.values.into_iter().map(value).collect(),
            })
            .collect(),
    }
}

impl sqlite3::Host for SpinState {}

impl sqlite3::HostConnection for SpinState {
    async fn open(
        &mut self,
        database: String,
    ) -> Outcome<Resource<DatabaseHandle>, sqlite3::Error> {
        Ok(self.open_database(database).await?.map_err(Into::into))
    }

    async fn execute(
        &mut self,
        this: Resource<DatabaseHandle>,
        statement: String,
        parameters: Vec<sqlite3::Value>,
    ) -> Outcome<sqlite3::QueryResult, sqlite3::Error> {
        let spin = self.host.clone();
        let handle = self.table.get_mut(&this)?;
        Ok(match handle.execute(statement, to_v2(parameters)).await {
            Ok(result) => Ok(from_v2(result)),
            Err(error) => Err(spin.sqlite_error(error).into()),
        })
    }

    async fn last_insert_rowid(&mut self, this: Resource<DatabaseHandle>) -> wasmtime::Result<i64> {
        Ok(self.table.get(&this)?.last_insert_rowid)
    }

    async fn changes(&mut self, this: Resource<DatabaseHandle>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.changes)
    }

    async fn drop(&mut self, this: Resource<DatabaseHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}
