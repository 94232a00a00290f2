//! The Redis key layout. Every counter key is built here and nowhere else.
//!
//! ```text
//! <prefix>:{<domain><entry1 key><entry1 value>}:<entry2 key><entry2 value>…:<algorithm>:<limit>:<window ms>
//! ```
//!
//! - Each component is written as `<byte length>.<escaped bytes>`, with `%`, `{` and `}` percent-escaped first.
//!   The length prefix makes the encoding injective (key `a_b` value `c` and key `a` value `b_c` differ), and
//!   the escaping keeps braces out of the hash tag.
//! - The `{…}` hash tag is the domain plus the descriptor's first entry (typically the client: an address, a
//!   user, an API key). All limits of that client share one Redis Cluster slot, so one script can decide them
//!   together.
//! - The limit's algorithm, amount and window are part of the key: changing a rule starts a fresh counter instead
//!   of reinterpreting an old one (Flask-Limiter does the same), and a caller-supplied limit equal to a configured
//!   one shares its counter.
//! - Components are bounded ([`MAX_COMPONENT_BYTES`], [`MAX_ENTRIES`]), so keys stay small whatever clients send.

use std::fmt::Write;

use crate::limits::LimitDef;

/// Longest domain, entry key or entry value accepted, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 256;
/// Most entries in one descriptor.
pub const MAX_ENTRIES: usize = 8;

/// Why a key cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// A component is longer than [`MAX_COMPONENT_BYTES`].
    #[error("{what} is {len} bytes long; at most {MAX_COMPONENT_BYTES} are allowed")]
    TooLong {
        /// Which component.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A descriptor has no entries or too many.
    #[error("a descriptor needs between 1 and {MAX_ENTRIES} entries, got {0}")]
    EntryCount(usize),
    /// The prefix contains a brace, which would break the hash tag.
    #[error("the key prefix must not be empty or contain '{{' or '}}'")]
    BadPrefix,
}

/// Builds counter keys under one prefix.
#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// A key space under `prefix` (for example `redline:rl`).
    pub fn new(prefix: &str) -> Result<Self, KeyError> {
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(KeyError::BadPrefix);
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix, for operators looking at Redis.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Checks a descriptor without building a key.
    pub fn validate(domain: &str, entries: &[(String, String)]) -> Result<(), KeyError> {
        if entries.is_empty() || entries.len() > MAX_ENTRIES {
            return Err(KeyError::EntryCount(entries.len()));
        }
        check("domain", domain)?;
        for (k, v) in entries {
            check("entry key", k)?;
            check("entry value", v)?;
        }
        Ok(())
    }

    /// The counter key of `limit` for the descriptor `entries` in `domain`.
    pub fn counter(
        &self,
        domain: &str,
        entries: &[(String, String)],
        limit: &LimitDef,
    ) -> Result<String, KeyError> {
        Self::validate(domain, entries)?;
        let mut key = String::with_capacity(64);
        key.push_str(&self.prefix);
        key.push_str(":{");
        component(&mut key, domain);
        let (first_key, first_value) = &entries[0];
        component(&mut key, first_key);
        component(&mut key, first_value);
        key.push_str("}:");
        for (k, v) in &entries[1..] {
            component(&mut key, k);
            component(&mut key, v);
        }
        let _ = write!(
            key,
            ":{}:{}:{}",
            limit.algorithm.code(),
            limit.limit,
            limit.window_ms
        );
        Ok(key)
    }
}

fn check(what: &'static str, value: &str) -> Result<(), KeyError> {
    if value.len() > MAX_COMPONENT_BYTES {
        return Err(KeyError::TooLong {
            what,
            len: value.len(),
        });
    }
    Ok(())
}

fn component(out: &mut String, raw: &str) {
    let escaped = escape(raw);
    let _ = write!(out, "{}.{escaped}", escaped.len());
}

fn escape(raw: &str) -> std::borrow::Cow<'_, str> {
    if !raw.contains(['%', '{', '}']) {
        return raw.into();
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for c in raw.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            other => out.push(other),
        }
    }
    out.into()
}

/// The hash tag of a key: the text between the first `{` and the next `}`, as Redis Cluster computes it.
pub fn hash_tag(key: &str) -> Option<&str> {
    let start = key.find('{')? + 1;
    let len = key[start..].find('}')?;
    (len > 0).then(|| &key[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{Algorithm, LimitDef};
    use proptest::prelude::*;
    use std::time::Duration;

    fn e(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn limit() -> LimitDef {
        LimitDef::new(10, Duration::from_secs(60), Algorithm::FixedWindow)
    }

    #[test]
    fn underscores_cannot_collide() {
        let ks = KeySpace::new("p").unwrap();
        let a = ks
            .counter("d", &e(&[("u", "1"), ("a_b", "c")]), &limit())
            .unwrap();
        let b = ks
            .counter("d", &e(&[("u", "1"), ("a", "b_c")]), &limit())
            .unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn braces_stay_out_of_the_hash_tag() {
        let ks = KeySpace::new("p").unwrap();
        let k1 = ks
            .counter("d", &e(&[("ip", "x}y"), ("p", "1")]), &limit())
            .unwrap();
        let k2 = ks
            .counter("d", &e(&[("ip", "x}y"), ("p", "2")]), &limit())
            .unwrap();
        assert_eq!(hash_tag(&k1), hash_tag(&k2));
        assert!(hash_tag(&k1).unwrap().contains("x%7Dy"));
    }

    #[test]
    fn rejects_oversized_and_empty_descriptors() {
        let ks = KeySpace::new("p").unwrap();
        let long = "x".repeat(MAX_COMPONENT_BYTES + 1);
        assert!(matches!(
            ks.counter("d", &e(&[("k", &long)]), &limit()),
            Err(KeyError::TooLong { .. })
        ));
        assert_eq!(ks.counter("d", &[], &limit()), Err(KeyError::EntryCount(0)));
        assert_eq!(KeySpace::new("a{b").unwrap_err(), KeyError::BadPrefix);
    }

    proptest! {
        #[test]
        fn distinct_descriptors_give_distinct_keys(
            a in proptest::collection::vec(("[a-c_%{}]{0,4}", "[a-c_%{}]{0,4}"), 1..4),
            b in proptest::collection::vec(("[a-c_%{}]{0,4}", "[a-c_%{}]{0,4}"), 1..4),
        ) {
            let ks = KeySpace::new("p").unwrap();
            let ka = ks.counter("d", &a, &limit()).unwrap();
            let kb = ks.counter("d", &b, &limit()).unwrap();
            prop_assert_eq!(a == b, ka == kb);
        }
    }
}
