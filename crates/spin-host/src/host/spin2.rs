//! `fermyon:spin@2.0.0`: key-value, variables, SQLite and outbound Redis.

use wasmtime::component::Resource;

use super::fermyon::spin2_0_0::{key_value, redis as outbound_redis, sqlite, variables};
use super::*;

impl key_value::Host for SpinState {}

impl SpinHost {
    /// Opens the component's store `label` (once per server), for every interface.
    pub(crate) async fn open_store(&self, label: String) -> Result<StoreHandle, key_value::Error> {
        let Some((config, cell)) = self.stores.get(&label) else {
            return Err(key_value::Error::AccessDenied);
        };
        if let Err(error) = cell
            .get_or_try_init(|| KeyValue::open(config, &self.places))
            .await
        {
            tracing::warn!(component = %self.id, "key-value store {label}: {error}");
            return Err(key_value::Error::Other(format!(
                "key-value store {label}: {error}"
            )));
        }
        Ok(StoreHandle {
            label,
            store: cell.clone(),
        })
    }
}

impl key_value::HostStore for SpinState {
    async fn open(&mut self, label: String) -> Outcome<Resource<StoreHandle>, key_value::Error> {
        self.open_store(label).await
    }

    async fn get(
        &mut self,
        this: Resource<StoreHandle>,
        key: String,
    ) -> Outcome<Option<Vec<u8>>, key_value::Error> {
        let handle = self.table.get(&this)?;
        Ok(handle.get(&key).await.map_err(key_value::Error::Other))
    }

    async fn set(
        &mut self,
        this: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Outcome<(), key_value::Error> {
        if let Err(too_large) = check_value(&value) {
            return Ok(Err(key_value::Error::Other(too_large)));
        }
        let handle = self.table.get(&this)?;
        Ok(handle
            .set(&key, &value)
            .await
            .map_err(key_value::Error::Other))
    }

    async fn delete(
        &mut self,
        this: Resource<StoreHandle>,
        key: String,
    ) -> Outcome<(), key_value::Error> {
        let handle = self.table.get(&this)?;
        Ok(handle.delete(&key).await.map_err(key_value::Error::Other))
    }

    async fn exists(
        &mut self,
        this: Resource<StoreHandle>,
        key: String,
    ) -> Outcome<bool, key_value::Error> {
        let handle = self.table.get(&this)?;
        Ok(handle
            .get(&key)
            .await
            .map(|v| v.is_some())
            .map_err(key_value::Error::Other))
    }

    async fn get_keys(
        &mut self,
        this: Resource<StoreHandle>,
    ) -> Outcome<Vec<String>, key_value::Error> {
        let handle = self.table.get(&this)?;
        Ok(handle.keys().await.map_err(key_value::Error::Other))
    }

    async fn drop(&mut self, this: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl variables::Host for SpinState {
    async fn get(&mut self, name: String) -> Outcome<String, variables::Error> {
        Ok(self.host.get_variable(name))
    }
}

impl SpinHost {
    /// The component's variable `name` as Spin's `variables.get` answers: an invalid name
    /// and one the component does not declare are errors the guest sees.
    pub(crate) fn get_variable(&self, name: String) -> Result<String, variables::Error> {
        let valid = !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(variables::Error::InvalidName(name));
        }
        self.variables
            .get(&name)
            .cloned()
            .ok_or(variables::Error::Undefined(format!(
                "component {} has no variable {name}: add it to [component.{}.variables]",
                self.id, self.id
            )))
    }
}

impl sqlite::Host for SpinState {}

impl SpinHost {
    /// Opens the component's database `database` (once per server), for either interface.
    pub(crate) async fn open_database(
        &self,
        database: String,
    ) -> Result<DatabaseHandle, sqlite::Error> {
        let Some((config, cell)) = self.databases.get(&database) else {
            return Err(sqlite::Error::AccessDenied);
        };
        if let Err(error) = cell
            .get_or_try_init(|| wasmcell_stores::open_database(config, &self.places))
            .await
        {
            tracing::warn!(component = %self.id, "SQLite database {database}: {error}");
            return Err(sqlite::Error::Io(format!(
                "SQLite database {database}: {error}"
            )));
        }
        Ok(DatabaseHandle {
            db: cell.clone(),
            last_insert_rowid: 0,
            changes: 0,
        })
    }
}

impl sqlite::HostConnection for SpinState {
    async fn open(&mut self, database: String) -> Outcome<Resource<DatabaseHandle>, sqlite::Error> {
        self.open_database(database).await
    }

    async fn execute(
        &mut self,
        this: Resource<DatabaseHandle>,
        statement: String,
        parameters: Vec<sqlite::Value>,
    ) -> Outcome<sqlite::QueryResult, sqlite::Error> {
        let spin = self.host.clone();
        let handle = self.table.get_mut(&this)?;
        Ok(handle
            .execute(statement, parameters)
            .await
            .map_err(|e| spin.sqlite_error(e)))
    }

    async fn drop(&mut self, this: Resource<DatabaseHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

/// Runs `statement` with `parameters`, its rows as Spin's values, refusing a result past
/// [`MAX_RESULT_BYTES`] as it is read.
pub(super) fn execute(
    db: &rusqlite::Connection,
    statement: &str,
    parameters: Vec<sqlite::Value>,
) -> Result<sqlite::QueryResult, SqlError> {
    use rusqlite::types::{Value as Sql, ValueRef};
    let mut prepared = db.prepare(statement)?;
    let columns: Vec<String> = prepared
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let parameters = parameters.into_iter().map(|v| match v {
        sqlite::Value::Integer(i) => Sql::Integer(i),
        sqlite::Value::Real(r) => Sql::Real(r),
        sqlite::Value::Text(t) => Sql::Text(t),
        sqlite::Value::Blob(b) => Sql::Blob(b),
        sqlite::Value::Null => Sql::Null,
    });
    let mut rows = prepared.query(rusqlite::params_from_iter(parameters))?;
    let mut results = Vec::new();
    let mut held = 0;
    while let Some(row) = rows.next()? {
        held += size_of::<sqlite::RowResult>();
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            let value = row.get_ref(i)?;
            held += size_of::<sqlite::Value>()
                + match value {
                    ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes.len(),
                    _ => 0,
                };
            if held > MAX_RESULT_BYTES {
                return Err(SqlError::ResultTooLarge);
            }
            values.push(match value {
                ValueRef::Null => sqlite::Value::Null,
                ValueRef::Integer(i) => sqlite::Value::Integer(i),
                ValueRef::Real(r) => sqlite::Value::Real(r),
                ValueRef::Text(t) => sqlite::Value::Text(String::from_utf8_lossy(t).into()),
                ValueRef::Blob(b) => sqlite::Value::Blob(b.to_vec()),
            });
        }
        results.push(sqlite::RowResult { values });
    }
    Ok(sqlite::QueryResult {
        columns,
        rows: results,
    })
}

impl outbound_redis::Host for SpinState {}

pub(super) async fn redis_query<T: ::redis::FromRedisValue>(
    mut connection: ::redis::aio::ConnectionManager,
    command: &::redis::Cmd,
) -> Result<T, outbound_redis::Error> {
    command.query_async(&mut connection).await.map_err(|e| {
        if e.kind() == ::redis::ErrorKind::TypeError {
            outbound_redis::Error::TypeError
        } else {
            outbound_redis::Error::Other(e.to_string())
        }
    })
}

impl SpinHost {
    /// Connects to the Redis server at `address` (`unreachable`: why the workload cannot
    /// connect at all, if it cannot): `open` of every version.
    pub(crate) async fn open_redis(
        &self,
        unreachable: Option<String>,
        address: String,
    ) -> Result<RedisHandle, outbound_redis::Error> {
        if let Some(why) = unreachable {
            return Err(outbound_redis::Error::Other(why));
        }
        let Ok(client) = ::redis::Client::open(address.as_str()) else {
            return Err(outbound_redis::Error::InvalidAddress);
        };
        let (scheme, host, port) = match &client.get_connection_info().addr {
            ::redis::ConnectionAddr::Tcp(host, port) => ("redis", host.clone(), *port),
            ::redis::ConnectionAddr::TcpTls { host, port, .. } => ("rediss", host.clone(), *port),
            _ => return Err(outbound_redis::Error::InvalidAddress),
        };
        // As Spin answers an address the component may not reach (its conformance suite
        // checks the variant); why is said on the container's stderr.
        if !self.allowed_hosts.allows(scheme, &host, port) {
            let target = format!("{scheme}://{host}:{port}");
            self.report_denied(&target, &target);
            return Err(outbound_redis::Error::InvalidAddress);
        }
        match wasmcell_stores::connect_redis(client).await {
            Ok(manager) => Ok(RedisHandle(manager)),
            Err(error) => Err(outbound_redis::Error::Other(error.to_string())),
        }
    }
}

impl outbound_redis::HostConnection for SpinState {
    async fn open(
        &mut self,
        address: String,
    ) -> Outcome<Resource<RedisHandle>, outbound_redis::Error> {
        let host = self.host.clone();
        let unreachable = super::services::no_network(self);
        Ok(match host.open_redis(unreachable, address).await {
            Ok(handle) => Ok(self.table.push(handle)?),
            Err(error) => Err(error),
        })
    }

    async fn publish(
        &mut self,
        this: Resource<RedisHandle>,
        channel: String,
        payload: Vec<u8>,
    ) -> Outcome<(), outbound_redis::Error> {
        let connection = self.redis(&this)?;
        let command = ::redis::cmd("PUBLISH").arg(channel).arg(payload).clone();
        Ok(redis_query::<i64>(connection, &command).await.map(drop))
    }

    async fn get(
        &mut self,
        this: Resource<RedisHandle>,
        key: String,
    ) -> Outcome<Option<Vec<u8>>, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("GET").arg(key)).await)
    }

    async fn set(
        &mut self,
        this: Resource<RedisHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Outcome<(), outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("SET").arg(key).arg(value)).await)
    }

    async fn incr(
        &mut self,
        this: Resource<RedisHandle>,
        key: String,
    ) -> Outcome<i64, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("INCR").arg(key)).await)
    }

    async fn del(
        &mut self,
        this: Resource<RedisHandle>,
        keys: Vec<String>,
    ) -> Outcome<u32, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("DEL").arg(keys)).await)
    }

    async fn sadd(
        &mut self,
        this: Resource<RedisHandle>,
        key: String,
        values: Vec<String>,
    ) -> Outcome<u32, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("SADD").arg(key).arg(values)).await)
    }

    async fn smembers(
        &mut self,
        this: Resource<RedisHandle>,
        key: String,
    ) -> Outcome<Vec<String>, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("SMEMBERS").arg(key)).await)
    }

    async fn srem(
        &mut self,
        this: Resource<RedisHandle>,
        key: String,
        values: Vec<String>,
    ) -> Outcome<u32, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        Ok(redis_query(connection, ::redis::cmd("SREM").arg(key).arg(values)).await)
    }

    async fn execute(
        &mut self,
        this: Resource<RedisHandle>,
        command: String,
        arguments: Vec<outbound_redis::RedisParameter>,
    ) -> Outcome<Vec<outbound_redis::RedisResult>, outbound_redis::Error> {
        let connection = self.redis(&this)?;
        let mut cmd = ::redis::cmd(&command);
        for argument in arguments {
            match argument {
                outbound_redis::RedisParameter::Int64(i) => cmd.arg(i),
                outbound_redis::RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        let value: ::redis::Value = match redis_query(connection, &cmd).await {
            Ok(value) => value,
            Err(error) => return Ok(Err(error)),
        };
        Ok(Ok(flatten(value)))
    }

    async fn drop(&mut self, this: Resource<RedisHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

/// A Redis reply as Spin's `redis-result` list: arrays flattened, scalars one element.
pub(super) fn flatten(value: ::redis::Value) -> Vec<outbound_redis::RedisResult> {
    use ::redis::Value;
    use outbound_redis::RedisResult as R;
    match value {
        Value::Nil => vec![R::Nil],
        Value::Int(i) => vec![R::Int64(i)],
        Value::BulkString(b) => vec![R::Binary(b)],
        Value::SimpleString(s) => vec![R::Status(s)],
        Value::Okay => vec![R::Status("OK".to_owned())],
        Value::Array(items) | Value::Set(items) => items.into_iter().flat_map(flatten).collect(),
        other => vec![R::Binary(format!("{other:?}").into_bytes())],
    }
}
