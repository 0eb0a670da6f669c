//! Spin's PostgreSQL values to and from PostgreSQL's, through tokio-postgres' types.
//!
//! `spin:postgres/postgres@4.0.0` has the richest values; the older interfaces' parameters are
//! 4.0.0 ones (a Spin 2 unsigned integer excepted: PostgreSQL has none), and their results are
//! the 4.0.0 results with what they cannot hold made `unsupported` (`other` as a type), as Spin
//! makes them. Where Spin's own mapping fails a valid value, this one does not: a
//! `timestamptz` column is read (as UTC, as the interface says every date-time is), and a
//! `datetime` or `timestamp` parameter is taken by a `timestamp` and a `timestamptz` alike
//! (the two share one wire format).

use std::error::Error as StdError;

use bytes::BytesMut;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use postgres_range::{BoundType, Normalizable, Range, RangeBound};
use rust_decimal::Decimal;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use super::super::fermyon::spin2_0_0::rdbms_types;
use super::super::spin::postgres3_0_0::postgres as v3;
use super::super::spin::postgres4_2_0::postgres as v4;
use v4::{DbDataType, DbValue, ParameterValue, RangeBoundKind};

type BoxError = Box<dyn StdError + Sync + Send>;

/// A statement's parameter, ready to send.
pub(super) type Parameter = Box<dyn ToSql + Sync + Send>;

/// `value` as PostgreSQL takes it, or why it is not a value of its kind (an invalid date, a
/// UUID or decimal that does not parse, bytes that are not JSON).
pub(super) fn parameter(value: ParameterValue) -> Result<Parameter, String> {
    Ok(match value {
        ParameterValue::Boolean(v) => Box::new(v),
        ParameterValue::Int8(v) => Box::new(v),
        ParameterValue::Int16(v) => Box::new(v),
        ParameterValue::Int32(v) => Box::new(v),
        ParameterValue::Int64(v) => Box::new(v),
        ParameterValue::Floating32(v) => Box::new(v),
        ParameterValue::Floating64(v) => Box::new(v),
        ParameterValue::Str(v) => Box::new(v),
        ParameterValue::Binary(v) => Box::new(v),
        ParameterValue::Date((y, m, d)) => Box::new(date(y, m, d)?),
        ParameterValue::Time((h, m, s, ns)) => Box::new(time(h, m, s, ns)?),
        ParameterValue::Datetime((y, mo, d, h, mi, s, ns)) => Box::new(Instant(
            NaiveDateTime::new(date(y, mo, d)?, time(h, mi, s, ns)?),
        )),
        ParameterValue::Timestamp(seconds) => Box::new(Instant(
            DateTime::from_timestamp(seconds, 0)
                .ok_or_else(|| format!("invalid epoch timestamp {seconds}"))?
                .naive_utc(),
        )),
        ParameterValue::Uuid(v) => {
            Box::new(uuid::Uuid::parse_str(&v).map_err(|e| format!("invalid UUID {v}: {e}"))?)
        }
        ParameterValue::Jsonb(v) => Box::new(
            serde_json::from_slice::<serde_json::Value>(&v)
                .map_err(|e| format!("invalid JSON {}: {e}", String::from_utf8_lossy(&v)))?,
        ),
        ParameterValue::Decimal(v) => Box::new(decimal(&v)?),
        ParameterValue::RangeInt32((lower, upper)) => {
            Box::new(range(discrete(lower, upper, i32::MAX)?, upper, Ok)?)
        }
        ParameterValue::RangeInt64((lower, upper)) => {
            Box::new(range(discrete(lower, upper, i64::MAX)?, upper, Ok)?)
        }
        ParameterValue::RangeDecimal((lower, upper)) => {
            Box::new(range(lower, upper, |v| decimal(&v).map(RangedDecimal))?)
        }
        ParameterValue::ArrayInt32(v) => Box::new(v),
        ParameterValue::ArrayInt64(v) => Box::new(v),
        ParameterValue::ArrayDecimal(v) => Box::new(
            v.iter()
                .map(|d| d.as_deref().map(decimal).transpose())
                .collect::<Result<Vec<_>, _>>()?,
        ),
        ParameterValue::ArrayStr(v) => Box::new(v),
        ParameterValue::Interval(v) => Box::new(Interval(v)),
        ParameterValue::DbNull => Box::new(Null),
    })
}

fn date(year: i32, month: u8, day: u8) -> Result<NaiveDate, String> {
    NaiveDate::from_ymd_opt(year, month.into(), day.into())
        .ok_or_else(|| format!("invalid date y={year}, m={month}, d={day}"))
}

fn time(hour: u8, minute: u8, second: u8, nanosecond: u32) -> Result<NaiveTime, String> {
    NaiveTime::from_hms_nano_opt(hour.into(), minute.into(), second.into(), nanosecond)
        .ok_or_else(|| format!("invalid time {hour}:{minute}:{second}:{nanosecond}"))
}

fn decimal(value: &str) -> Result<Decimal, String> {
    Decimal::from_str_exact(value).map_err(|e| format!("invalid decimal {value}: {e}"))
}

type Bound<T> = Option<(T, RangeBoundKind)>;

/// `lower`, if the bounds of an integer range can be put in PostgreSQL's canonical `[a, b)`
/// form: an exclusive lower or inclusive upper bound at the type's maximum cannot (postgres_range
/// would overflow adding one).
fn discrete<T: PartialEq + Copy + std::fmt::Display>(
    lower: Bound<T>,
    upper: Bound<T>,
    max: T,
) -> Result<Bound<T>, String> {
    let overflows = matches!(lower, Some((v, RangeBoundKind::Exclusive)) if v == max)
        || matches!(upper, Some((v, RangeBoundKind::Inclusive)) if v == max);
    match overflows {
        true => Err(format!("a range bound past {max} has no next value")),
        false => Ok(lower),
    }
}

fn range<W, T: PartialOrd + Normalizable>(
    lower: Bound<W>,
    upper: Bound<W>,
    convert: impl Fn(W) -> Result<T, String>,
) -> Result<Range<T>, String> {
    let kind = |kind| match kind {
        RangeBoundKind::Inclusive => BoundType::Inclusive,
        RangeBoundKind::Exclusive => BoundType::Exclusive,
    };
    let lower = match lower {
        Some((v, k)) => Some(RangeBound::new(convert(v)?, kind(k))),
        None => None,
    };
    let upper = match upper {
        Some((v, k)) => Some(RangeBound::new(convert(v)?, kind(k))),
        None => None,
    };
    Ok(Range::new(lower, upper))
}

/// A NULL of whatever type the statement has in its place.
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(&self, _: &Type, _: &mut BytesMut) -> Result<IsNull, BoxError> {
        Ok(IsNull::Yes)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A date-time as UTC, for a `timestamp` or a `timestamptz` (the same microseconds since
/// 2000-01-01 on the wire).
#[derive(Debug)]
struct Instant(NaiveDateTime);

impl ToSql for Instant {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        self.0.to_sql(&Type::TIMESTAMP, out)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TIMESTAMP | Type::TIMESTAMPTZ)
    }

    to_sql_checked!();
}

/// A `numeric` bound of a `numrange` (ranges of a continuous type are kept as given).
#[derive(Debug, PartialEq, PartialOrd)]
struct RangedDecimal(Decimal);

impl Normalizable for RangedDecimal {
    fn normalize<S: postgres_range::BoundSided>(
        bound: RangeBound<S, RangedDecimal>,
    ) -> RangeBound<S, RangedDecimal> {
        bound
    }
}

impl ToSql for RangedDecimal {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        self.0.to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <Decimal as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for RangedDecimal {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Decimal::from_sql(ty, raw).map(RangedDecimal)
    }

    fn accepts(ty: &Type) -> bool {
        <Decimal as FromSql>::accepts(ty)
    }
}

/// An `interval`: microseconds, days and months, as PostgreSQL sends them (big-endian).
#[derive(Debug)]
struct Interval(v4::Interval);

impl ToSql for Interval {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.extend_from_slice(&self.0.micros.to_be_bytes());
        out.extend_from_slice(&self.0.days.to_be_bytes());
        out.extend_from_slice(&self.0.months.to_be_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Interval {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let (Ok(micros), Ok(days), Ok(months)) = (
            raw.get(..8).unwrap_or_default().try_into(),
            raw.get(8..12).unwrap_or_default().try_into(),
            raw.get(12..).unwrap_or_default().try_into(),
        ) else {
            return Err("unexpected binary format for a PostgreSQL interval".into());
        };
        Ok(Interval(v4::Interval {
            micros: i64::from_be_bytes(micros),
            days: i32::from_be_bytes(days),
            months: i32::from_be_bytes(months),
        }))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}

/// An array whose header is checked against its bytes before it is read: postgres-types
/// reserves room for as many elements as the header claims, and a server claiming 2^31 would
/// take all memory (every element takes at least its 4-byte length).
struct Array<T>(Vec<Option<T>>);

impl<'a, T: FromSql<'a>> FromSql<'a> for Array<T> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let word = |at: usize| -> Result<i32, BoxError> {
            let bytes = raw.get(at..at + 4).ok_or("a truncated array")?;
            Ok(i32::from_be_bytes(bytes.try_into()?))
        };
        let dimensions = usize::try_from(word(0)?)?;
        let mut elements: usize = if dimensions == 0 { 0 } else { 1 };
        for dimension in 0..dimensions {
            let length = usize::try_from(word(12 + dimension * 8)?)?;
            elements = elements.checked_mul(length).ok_or("an array too large")?;
        }
        if elements
            .checked_mul(4)
            .is_none_or(|least| least > raw.len())
        {
            return Err("an array claiming more elements than it holds".into());
        }
        Vec::<Option<T>>::from_sql(ty, raw).map(Array)
    }

    fn accepts(ty: &Type) -> bool {
        <Vec<Option<T>> as FromSql>::accepts(ty)
    }
}

/// A value of a type Spin has no case for: its bytes as PostgreSQL sent them.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The Spin type of a column of PostgreSQL type `ty`.
pub(super) fn data_type(ty: &Type) -> DbDataType {
    match *ty {
        Type::BOOL => DbDataType::Boolean,
        Type::INT2 => DbDataType::Int16,
        Type::INT4 => DbDataType::Int32,
        Type::INT8 => DbDataType::Int64,
        Type::FLOAT4 => DbDataType::Floating32,
        Type::FLOAT8 => DbDataType::Floating64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR => DbDataType::Str,
        Type::BYTEA => DbDataType::Binary,
        Type::DATE => DbDataType::Date,
        Type::TIME => DbDataType::Time,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => DbDataType::Datetime,
        Type::UUID => DbDataType::Uuid,
        Type::JSONB => DbDataType::Jsonb,
        Type::NUMERIC => DbDataType::Decimal,
        Type::INT4_RANGE => DbDataType::RangeInt32,
        Type::INT8_RANGE => DbDataType::RangeInt64,
        Type::NUM_RANGE => DbDataType::RangeDecimal,
        Type::INT4_ARRAY => DbDataType::ArrayInt32,
        Type::INT8_ARRAY => DbDataType::ArrayInt64,
        Type::NUMERIC_ARRAY => DbDataType::ArrayDecimal,
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY => DbDataType::ArrayStr,
        Type::INTERVAL => DbDataType::Interval,
        _ => DbDataType::Other(ty.name().to_owned()),
    }
}

/// Column `index` of `row` as Spin's value; `db-null` for a NULL of any type.
pub(super) fn value(row: &Row, index: usize) -> Result<DbValue, tokio_postgres::Error> {
    fn get<'a, T: FromSql<'a>>(
        row: &'a Row,
        index: usize,
    ) -> Result<Option<T>, tokio_postgres::Error> {
        row.try_get(index)
    }
    let ty = row.columns()[index].type_();
    let value = match data_type(ty) {
        DbDataType::Boolean => get(row, index)?.map(DbValue::Boolean),
        DbDataType::Int8 => get(row, index)?.map(DbValue::Int8),
        DbDataType::Int16 => get(row, index)?.map(DbValue::Int16),
        DbDataType::Int32 => get(row, index)?.map(DbValue::Int32),
        DbDataType::Int64 => get(row, index)?.map(DbValue::Int64),
        DbDataType::Floating32 => get(row, index)?.map(DbValue::Floating32),
        DbDataType::Floating64 => get(row, index)?.map(DbValue::Floating64),
        DbDataType::Str => get(row, index)?.map(DbValue::Str),
        DbDataType::Binary => get(row, index)?.map(DbValue::Binary),
        DbDataType::Date => get::<NaiveDate>(row, index)?.map(|d| DbValue::Date(ymd(d))),
        DbDataType::Time => get::<NaiveTime>(row, index)?.map(|t| DbValue::Time(hmsn(t))),
        DbDataType::Datetime if *ty == Type::TIMESTAMPTZ => {
            get::<DateTime<chrono::Utc>>(row, index)?.map(|t| datetime(t.naive_utc()))
        }
        DbDataType::Datetime => get::<NaiveDateTime>(row, index)?.map(datetime),
        DbDataType::Timestamp => None,
        DbDataType::Uuid => get::<uuid::Uuid>(row, index)?.map(|u| DbValue::Uuid(u.to_string())),
        DbDataType::Jsonb => get::<serde_json::Value>(row, index)?
            .map(|v| DbValue::Jsonb(serde_json::to_vec(&v).unwrap_or_default())),
        DbDataType::Decimal => get::<Decimal>(row, index)?.map(|d| DbValue::Decimal(d.to_string())),
        DbDataType::RangeInt32 => unwound(|| get::<Range<i32>>(row, index))?
            .map(|r| DbValue::RangeInt32(bounds(r, |v| *v, 0))),
        DbDataType::RangeInt64 => unwound(|| get::<Range<i64>>(row, index))?
            .map(|r| DbValue::RangeInt64(bounds(r, |v| *v, 0))),
        DbDataType::RangeDecimal => get::<Range<RangedDecimal>>(row, index)?.map(|r| {
            DbValue::RangeDecimal(bounds(r, |v| v.0.to_string(), RangedDecimal(Decimal::ZERO)))
        }),
        DbDataType::ArrayInt32 => get::<Array<i32>>(row, index)?.map(|a| DbValue::ArrayInt32(a.0)),
        DbDataType::ArrayInt64 => get::<Array<i64>>(row, index)?.map(|a| DbValue::ArrayInt64(a.0)),
        DbDataType::ArrayDecimal => get::<Array<Decimal>>(row, index)?.map(|a| {
            DbValue::ArrayDecimal(a.0.into_iter().map(|d| d.map(|d| d.to_string())).collect())
        }),
        DbDataType::ArrayStr => get::<Array<String>>(row, index)?.map(|a| DbValue::ArrayStr(a.0)),
        DbDataType::Interval => get::<Interval>(row, index)?.map(|i| DbValue::Interval(i.0)),
        DbDataType::Other(_) => get::<Raw>(row, index)?.map(|raw| DbValue::Unsupported(raw.0)),
    };
    Ok(value.unwrap_or(DbValue::DbNull))
}

/// `read`, or its panic as an unreadable value: postgres_range asserts instead of failing on
/// a bound with no next value, which only a hostile server sends.
fn unwound<T>(
    read: impl FnOnce() -> Result<Option<T>, tokio_postgres::Error>,
) -> Result<Option<T>, tokio_postgres::Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or(Ok(None))
}

fn ymd(d: NaiveDate) -> (i32, u8, u8) {
    // Month and day always fit: 1-12, 1-31.
    (d.year(), d.month() as u8, d.day() as u8)
}

fn hmsn(t: NaiveTime) -> (u8, u8, u8, u32) {
    (
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
        t.nanosecond(),
    )
}

fn datetime(t: NaiveDateTime) -> DbValue {
    let ((y, mo, d), (h, mi, s, ns)) = (ymd(t.date()), hmsn(t.time()));
    DbValue::Datetime((y, mo, d, h, mi, s, ns))
}

/// A range's bounds; an empty range as `(0, 0)`, both exclusive (no bound at all would be
/// every value).
fn bounds<T, W>(range: Range<T>, convert: impl Fn(&T) -> W, zero: T) -> (Bound<W>, Bound<W>)
where
    T: PartialOrd + Normalizable,
{
    let kind = |kind| match kind {
        BoundType::Inclusive => RangeBoundKind::Inclusive,
        BoundType::Exclusive => RangeBoundKind::Exclusive,
    };
    if range.is_empty() {
        let empty = || Some((convert(&zero), RangeBoundKind::Exclusive));
        return (empty(), empty());
    }
    (
        range.lower().map(|b| (convert(&b.value), kind(b.type_))),
        range.upper().map(|b| (convert(&b.value), kind(b.type_))),
    )
}

/// A Spin 3 parameter: the 4.0.0 one it is.
pub(super) fn from_v3(value: v3::ParameterValue) -> ParameterValue {
    use v3::ParameterValue as P3;
    match value {
        P3::Boolean(v) => ParameterValue::Boolean(v),
        P3::Int8(v) => ParameterValue::Int8(v),
        P3::Int16(v) => ParameterValue::Int16(v),
        P3::Int32(v) => ParameterValue::Int32(v),
        P3::Int64(v) => ParameterValue::Int64(v),
        P3::Floating32(v) => ParameterValue::Floating32(v),
        P3::Floating64(v) => ParameterValue::Floating64(v),
        P3::Str(v) => ParameterValue::Str(v),
        P3::Binary(v) => ParameterValue::Binary(v),
        P3::Date(v) => ParameterValue::Date(v),
        P3::Time(v) => ParameterValue::Time(v),
        P3::Datetime(v) => ParameterValue::Datetime(v),
        P3::Timestamp(v) => ParameterValue::Timestamp(v),
        P3::DbNull => ParameterValue::DbNull,
    }
}

/// A Spin 2 parameter as 4.0.0's; PostgreSQL has no unsigned integers, which Spin refuses
/// before the database sees them.
pub(super) fn from_v2(value: rdbms_types::ParameterValue) -> Result<ParameterValue, String> {
    use rdbms_types::ParameterValue as P2;
    Ok(match value {
        P2::Boolean(v) => ParameterValue::Boolean(v),
        P2::Int8(v) => ParameterValue::Int8(v),
        P2::Int16(v) => ParameterValue::Int16(v),
        P2::Int32(v) => ParameterValue::Int32(v),
        P2::Int64(v) => ParameterValue::Int64(v),
        P2::Floating32(v) => ParameterValue::Floating32(v),
        P2::Floating64(v) => ParameterValue::Floating64(v),
        P2::Str(v) => ParameterValue::Str(v),
        P2::Binary(v) => ParameterValue::Binary(v),
        P2::DbNull => ParameterValue::DbNull,
        P2::Uint8(_) | P2::Uint16(_) | P2::Uint32(_) | P2::Uint64(_) => {
            return Err("Postgres does not support unsigned integers".to_owned());
        }
    })
}

/// 4.0.0's rows as Spin 3 gets them: what 3.0.0 has no case for is `unsupported`.
pub(super) fn to_v3(rows: v4::RowSet) -> v3::RowSet {
    use v3::{DbDataType as T3, DbValue as V3};
    let columns = rows.columns.into_iter().map(|column| v3::Column {
        name: column.name,
        data_type: match column.data_type {
            DbDataType::Boolean => T3::Boolean,
            DbDataType::Int8 => T3::Int8,
            DbDataType::Int16 => T3::Int16,
            DbDataType::Int32 => T3::Int32,
            DbDataType::Int64 => T3::Int64,
            DbDataType::Floating32 => T3::Floating32,
            DbDataType::Floating64 => T3::Floating64,
            DbDataType::Str => T3::Str,
            DbDataType::Binary => T3::Binary,
            DbDataType::Date => T3::Date,
            DbDataType::Time => T3::Time,
            DbDataType::Datetime => T3::Datetime,
            DbDataType::Timestamp => T3::Timestamp,
            _ => T3::Other,
        },
    });
    let value = |value| match value {
        DbValue::Boolean(v) => V3::Boolean(v),
        DbValue::Int8(v) => V3::Int8(v),
        DbValue::Int16(v) => V3::Int16(v),
        DbValue::Int32(v) => V3::Int32(v),
        DbValue::Int64(v) => V3::Int64(v),
        DbValue::Floating32(v) => V3::Floating32(v),
        DbValue::Floating64(v) => V3::Floating64(v),
        DbValue::Str(v) => V3::Str(v),
        DbValue::Binary(v) => V3::Binary(v),
        DbValue::Date(v) => V3::Date(v),
        DbValue::Time(v) => V3::Time(v),
        DbValue::Datetime(v) => V3::Datetime(v),
        DbValue::Timestamp(v) => V3::Timestamp(v),
        DbValue::DbNull => V3::DbNull,
        _ => V3::Unsupported,
    };
    v3::RowSet {
        columns: columns.collect(),
        rows: rows
            .rows
            .into_iter()
            .map(|row| row.into_iter().map(value).collect())
            .collect(),
    }
}

/// 4.0.0's rows as Spin 2 gets them: dates and times and everything newer are `unsupported`.
pub(super) fn to_v2(rows: v4::RowSet) -> rdbms_types::RowSet {
    use rdbms_types::{DbDataType as T2, DbValue as V2};
    let columns = rows.columns.into_iter().map(|column| rdbms_types::Column {
        name: column.name,
        data_type: match column.data_type {
            DbDataType::Boolean => T2::Boolean,
            DbDataType::Int8 => T2::Int8,
            DbDataType::Int16 => T2::Int16,
            DbDataType::Int32 => T2::Int32,
            DbDataType::Int64 => T2::Int64,
            DbDataType::Floating32 => T2::Floating32,
            DbDataType::Floating64 => T2::Floating64,
            DbDataType::Str => T2::Str,
            DbDataType::Binary => T2::Binary,
            _ => T2::Other,
        },
    });
    let value = |value| match value {
        DbValue::Boolean(v) => V2::Boolean(v),
        DbValue::Int8(v) => V2::Int8(v),
        DbValue::Int16(v) => V2::Int16(v),
        DbValue::Int32(v) => V2::Int32(v),
        DbValue::Int64(v) => V2::Int64(v),
        DbValue::Floating32(v) => V2::Floating32(v),
        DbValue::Floating64(v) => V2::Floating64(v),
        DbValue::Str(v) => V2::Str(v),
        DbValue::Binary(v) => V2::Binary(v),
        DbValue::DbNull => V2::DbNull,
        _ => V2::Unsupported,
    };
    rdbms_types::RowSet {
        columns: columns.collect(),
        rows: rows
            .rows
            .into_iter()
            .map(|row| row.into_iter().map(value).collect())
            .collect(),
    }
}

/// About how much memory `value` takes, to bound what a query reads.
pub(in crate::host) fn size(value: &DbValue) -> usize {
    let strings = |values: &[Option<String>]| {
        values
            .iter()
            .map(|v| size_of::<Option<String>>() + v.as_ref().map_or(0, String::len))
            .sum()
    };
    size_of::<DbValue>()
        + match value {
            DbValue::Str(v) | DbValue::Uuid(v) | DbValue::Decimal(v) => v.len(),
            DbValue::Binary(v) | DbValue::Jsonb(v) | DbValue::Unsupported(v) => v.len(),
            DbValue::ArrayInt32(v) => v.len() * size_of::<Option<i32>>(),
            DbValue::ArrayInt64(v) => v.len() * size_of::<Option<i64>>(),
            DbValue::ArrayDecimal(v) | DbValue::ArrayStr(v) => strings(v),
            DbValue::RangeDecimal((lower, upper)) => {
                lower.as_ref().map_or(0, |(v, _)| v.len())
                    + upper.as_ref().map_or(0, |(v, _)| v.len())
            }
            _ => 0,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest's range whose canonical form would overflow is refused, not a panic.
    #[test]
    fn integer_ranges_past_the_maximum_are_refused() {
        use RangeBoundKind::{Exclusive, Inclusive};
        for (lower, upper) in [
            (None, Some((i32::MAX, Inclusive))),
            (Some((i32::MAX, Exclusive)), None),
        ] {
            let refused = parameter(ParameterValue::RangeInt32((lower, upper)));
            assert!(refused.is_err_and(|why| why.contains("no next value")));
        }
        let refused = parameter(ParameterValue::RangeInt64((
            None,
            Some((i64::MAX, Inclusive)),
        )));
        assert!(refused.is_err());
        let fine = (Some((i32::MAX - 1, Exclusive)), Some((i32::MAX, Exclusive)));
        assert!(parameter(ParameterValue::RangeInt32(fine)).is_ok());
    }

    /// An array header claiming more elements than its bytes hold is refused before anything
    /// is reserved for them.
    #[test]
    fn arrays_claiming_more_than_they_hold_are_refused() {
        let header = |count: i32| {
            let mut raw = Vec::new();
            for word in [1, 0, 23, count, 1] {
                raw.extend_from_slice(&i32::to_be_bytes(word));
            }
            raw
        };
        let mut one = header(1);
        one.extend_from_slice(&4i32.to_be_bytes());
        one.extend_from_slice(&7i32.to_be_bytes());
        let read = Array::<i32>::from_sql(&Type::INT4_ARRAY, &one).unwrap();
        assert_eq!(read.0, vec![Some(7)]);
        let lying = header(i32::MAX);
        assert!(Array::<i32>::from_sql(&Type::INT4_ARRAY, &lying).is_err());
        assert!(Array::<i32>::from_sql(&Type::INT4_ARRAY, &[0, 0, 0, 1]).is_err());
    }
}
