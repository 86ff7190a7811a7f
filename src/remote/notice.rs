//! Notices: what one process tells the others after changing the shared
//! tier, so that they drop what their own tiers hold of it.

use serde::{Deserialize, Serialize};

use super::stamp::Stamp;
use crate::InternalCacheKey;

/// One published batch of changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Notice {
    /// The publishing process (it ignores its own notices).
    pub writer: u32,
    /// Prefixes invalidated (the empty prefix: a clear), with the stamp of
    /// the invalidation.
    pub prefixes: Vec<(String, u64)>,
    /// Keys replaced: (prefix, key, type name, stamp of the new version).
    pub keys: Vec<(String, String, String, u64)>,
}

impl Notice {
    pub(crate) fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.keys.is_empty()
    }

    pub(crate) fn add_key(&mut self, key: &InternalCacheKey, stamp: Stamp) {
        self.keys.push((
            key.prefix().to_string(),
            key.key().to_string(),
            key.type_name().to_string(),
            stamp.micros,
        ));
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// A logged or published message: 16 hex digits of generation, the
    /// data set's 16-character identity, then the notice. `None` for
    /// anything else (written by someone else).
    pub(crate) fn decode(message: &[u8]) -> Option<(u64, &str, Notice)> {
        let generation = std::str::from_utf8(message.get(..16)?).ok()?;
        let generation = u64::from_str_radix(generation, 16).ok()?;
        let boot = std::str::from_utf8(message.get(16..32)?).ok()?;
        let notice = postcard::from_bytes(message.get(32..)?).ok()?;
        Some((generation, boot, notice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_and_garbage_is_refused() {
        let mut notice = Notice {
            writer: 3,
            prefixes: vec![("idx/".into(), 42)],
            ..Notice::default()
        };
        notice.add_key(
            &InternalCacheKey::new("p", "k", "T"),
            Stamp {
                micros: 7,
                writer: 3,
            },
        );
        let mut message = format!("{:016x}0123456789abcdef", 9u64).into_bytes();
        message.extend(notice.encode());
        assert_eq!(
            Notice::decode(&message),
            Some((9, "0123456789abcdef", notice))
        );
        for garbage in [
            &b""[..],
            b"zzzzzzzzzzzzzzzz",
            b"0000000000000001\xff\xff\xff",
        ] {
            assert_eq!(Notice::decode(garbage), None);
        }
    }
}
