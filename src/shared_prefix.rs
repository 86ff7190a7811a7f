//! Key prefixes as journal snapshots carry them: shared, not copied.
//!
//! A snapshot names every disk-only entry by its key's hash and prefix
//! (`Fact::Stored`), and an application has few prefixes: a million entries
//! on disk are a million facts with a handful of distinct prefixes. Reading
//! each into its own `String`, and later into the replay's map, cost a
//! million allocations on every reopen. A prefix read right after the same
//! text on the same thread (a run of one prefix, the usual order) shares
//! that text's allocation instead.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A key prefix, shared with the previous one read or made on this thread
/// when the text is the same. On the wire it is a plain string, so journals
/// written before read the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SharedPrefix(Arc<str>);

impl SharedPrefix {
    /// `prefix`, sharing the allocation of the last one made on this thread
    /// if it has the same text.
    pub(crate) fn new(prefix: &str) -> Self {
        thread_local! {
            static LAST: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
        }
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            match last.as_ref() {
                Some(shared) if **shared == *prefix => Self(shared.clone()),
                _ => {
                    let shared: Arc<str> = prefix.into();
                    *last = Some(shared.clone());
                    Self(shared)
                }
            }
        })
    }

    /// `prefix` as it is, shared (a key's own).
    pub(crate) fn from_arc(prefix: Arc<str>) -> Self {
        Self(prefix)
    }

    pub(crate) fn into_arc(self) -> Arc<str> {
        self.0
    }
}

impl Serialize for SharedPrefix {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedPrefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_text(deserializer, "a key prefix", SharedPrefix::new)
    }
}

/// Reads a string into what `make` makes of it, borrowing the text from the
/// input where the format allows (postcard does): no `String` in between.
pub(crate) fn deserialize_text<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    what: &'static str,
    make: fn(&str) -> T,
) -> Result<T, D::Error> {
    struct Text<T>(&'static str, fn(&str) -> T);
    impl<T> serde::de::Visitor<'_> for Text<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
            Ok((self.1)(text))
        }
    }
    deserializer.deserialize_str(Text(what, make))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_one_prefix_shares_one_allocation_and_reads_as_a_string() {
        let (a, b) = (SharedPrefix::new("ds/1"), SharedPrefix::new("ds/1"));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        let c = SharedPrefix::new("ds/2");
        assert_eq!(&*c.into_arc(), "ds/2");
        // The same bytes as a `String` on the wire, both ways.
        let wire = postcard::to_stdvec(&a).unwrap();
        assert_eq!(wire, postcard::to_stdvec(&"ds/1".to_string()).unwrap());
        let back: SharedPrefix = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back, a);
        assert!(postcard::from_bytes::<SharedPrefix>(&[5, b'a']).is_err());
    }
}
