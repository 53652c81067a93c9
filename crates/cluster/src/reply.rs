//! Redis replies read into typed values, with a specific error for every shape that
//! is not what the protocol says: a Redis that answers garbage (a wrong server on the
//! port, a key of another type, a hand-edited entry) is reported, never unwrapped.

use std::fmt;
use std::str::FromStr;

use redis::Value;

use crate::link::ClusterError;

/// A stream entry id, `MILLISECONDS-SEQUENCE`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// The id before every entry (`0-0`).
    pub const ZERO: Self = Self { ms: 0, seq: 0 };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = ClusterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ClusterError::garbage("a stream id like 1700000000000-0", s);
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// One stream entry: its id and its field/value pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: StreamId,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The value of `name`, or an error naming the missing field.
    pub fn field(&self, name: &'static str) -> Result<&[u8], ClusterError> {
        self.fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
            .ok_or_else(|| {
                ClusterError::garbage(
                    "a stream entry with the protocol's fields",
                    format!("entry {} has no field {name:?}", self.id),
                )
            })
    }

    /// `name` parsed as a number.
    pub fn number<T: FromStr>(&self, name: &'static str) -> Result<T, ClusterError> {
        let raw = self.field(name)?;
        std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                ClusterError::garbage(
                    "a number",
                    format!(
                        "entry {} field {name:?} is {:?}",
                        self.id,
                        String::from_utf8_lossy(raw)
                    ),
                )
            })
    }

    /// `name` as UTF-8 text.
    pub fn text(&self, name: &'static str) -> Result<&str, ClusterError> {
        let raw = self.field(name)?;
        std::str::from_utf8(raw)
            .map_err(|_| ClusterError::garbage("text", format!("entry {} field {name:?}", self.id)))
    }
}

/// The bytes of a bulk or simple string.
pub fn bytes<'a>(value: &'a Value, what: &'static str) -> Result<&'a [u8], ClusterError> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.as_bytes()),
        other => Err(ClusterError::garbage(what, short(other))),
    }
}

/// An integer, given as one or as a decimal string.
pub fn int(value: &Value, what: &'static str) -> Result<i64, ClusterError> {
    match value {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClusterError::garbage(what, short(value))),
        other => Err(ClusterError::garbage(what, short(other))),
    }
}

/// The elements of an array.
pub fn array<'a>(value: &'a Value, what: &'static str) -> Result<&'a [Value], ClusterError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(ClusterError::garbage(what, short(other))),
    }
}

/// The entries of an `XRANGE`/`XREVRANGE` reply.
pub fn entries(value: &Value) -> Result<Vec<Entry>, ClusterError> {
    array(value, "a list of stream entries")?
        .iter()
        .map(entry)
        .collect()
}

/// The entries of an `XREAD` reply on one stream (nil: none yet).
pub fn read_entries(value: &Value) -> Result<Vec<Entry>, ClusterError> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Map(streams) => match streams.first() {
            Some((_, entries_value)) => entries(entries_value),
            None => Ok(Vec::new()),
        },
        other => {
            let streams = array(other, "an XREAD reply")?;
            let Some(stream) = streams.first() else {
                return Ok(Vec::new());
            };
            let pair = array(stream, "an XREAD stream [name, entries]")?;
            match pair {
                [_, list] => entries(list),
                _ => Err(ClusterError::garbage(
                    "an XREAD stream [name, entries]",
                    short(stream),
                )),
            }
        }
    }
}

fn entry(value: &Value) -> Result<Entry, ClusterError> {
    let pair = array(value, "a stream entry [id, fields]")?;
    let [id, fields] = pair else {
        return Err(ClusterError::garbage(
            "a stream entry [id, fields]",
            short(value),
        ));
    };
    let id: StreamId = std::str::from_utf8(bytes(id, "a stream id")?)
        .map_err(|_| ClusterError::garbage("a stream id", short(id)))?
        .parse()?;
    let flat = array(fields, "a stream entry's fields")?;
    if flat.len() % 2 != 0 {
        return Err(ClusterError::garbage(
            "field/value pairs",
            format!("entry {id} has {} items", flat.len()),
        ));
    }
    let fields = flat
        .chunks(2)
        .map(|kv| {
            Ok((
                bytes(&kv[0], "a field name")?.to_vec(),
                bytes(&kv[1], "a field value")?.to_vec(),
            ))
        })
        .collect::<Result<_, ClusterError>>()?;
    Ok(Entry { id, fields })
}

/// A reply shortened for an error message.
pub fn short(value: &Value) -> String {
    let mut s = format!("{value:?}");
    if s.len() > 120 {
        let mut end = 120;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_ids_order_as_redis_orders_them() {
        let a: StreamId = "5-9".parse().unwrap();
        let b: StreamId = "10-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "10-0");
        for bad in ["", "5", "5-", "x-1", "1-2-3"] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_xread_reply_gives_its_entries_and_nil_gives_none() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("{a}:labels"),
            Value::Array(vec![Value::Array(vec![
                bulk("7-1"),
                Value::Array(vec![bulk("r"), bulk("2"), bulk("s"), bulk("40")]),
            ])]),
        ])]);
        let got = read_entries(&reply).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, StreamId { ms: 7, seq: 1 });
        assert_eq!(got[0].number::<u16>("r").unwrap(), 2);
        assert_eq!(got[0].number::<u64>("s").unwrap(), 40);
        assert!(read_entries(&Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn every_malformed_shape_is_named_not_unwrapped() {
        let cases = [
            Value::Int(3),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk("s"), Value::Int(2)])]),
            Value::Array(vec![Value::Array(vec![
                bulk("s"),
                Value::Array(vec![Value::Array(vec![
                    bulk("not-an-id"),
                    Value::Array(vec![]),
                ])]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                bulk("s"),
                Value::Array(vec![Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("odd")]),
                ])]),
            ])]),
        ];
        for case in cases {
            let err = read_entries(&case).unwrap_err();
            assert!(matches!(err, ClusterError::Garbage { .. }), "{err}");
        }
        let entry = Entry {
            id: StreamId::ZERO,
            fields: vec![(b"s".to_vec(), b"nine".to_vec())],
        };
        assert!(
            entry
                .number::<u64>("s")
                .unwrap_err()
                .to_string()
                .contains("nine")
        );
        assert!(entry.field("r").unwrap_err().to_string().contains("\"r\""));
    }
}
