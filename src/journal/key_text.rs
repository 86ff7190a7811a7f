//! A key's text and type name as keyed journal facts carry them.
//!
//! On the wire both are plain strings, so journals written before read the
//! same. In memory they are what a key holds: the text an `Arc<str>` read
//! straight from the input (no `String` in between, and none when a fact is
//! made from a key: it shares the key's), the type name an interned
//! `&'static str`. A reopen reads a keyed fact for every resident entry,
//! and the spill path makes one for every record it writes.

use std::cell::Cell;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::shared_prefix::deserialize_text;

/// The user's key within its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyText(pub(crate) Arc<str>);

/// A key's type name, interned (there are few).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TypeName(pub(crate) &'static str);

impl Serialize for KeyText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl Serialize for TypeName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_text(deserializer, "a key", |text| KeyText(text.into()))
    }
}

impl<'de> Deserialize<'de> for TypeName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_text(deserializer, "a type name", |name| {
            TypeName(interned_here(name))
        })
    }
}

/// `name` interned, asking the process-wide table only when it differs
/// from the last name this thread interned (a replay reads runs of one).
fn interned_here(name: &str) -> &'static str {
    thread_local! {
        static LAST: Cell<&'static str> = const { Cell::new("") };
    }
    LAST.with(|last| {
        if last.get() == name {
            return last.get();
        }
        let interned = super::fact::intern(name);
        last.set(interned);
        interned
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_and_type_names_are_plain_strings_on_the_wire() {
        let key = KeyText("k/1".into());
        let wire = postcard::to_stdvec(&key).unwrap();
        assert_eq!(wire, postcard::to_stdvec(&"k/1".to_string()).unwrap());
        assert_eq!(postcard::from_bytes::<KeyText>(&wire).unwrap(), key);
        let name = TypeName("Blob");
        let wire = postcard::to_stdvec(&name).unwrap();
        assert_eq!(wire, postcard::to_stdvec(&"Blob".to_string()).unwrap());
        let back: TypeName = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back, name);
        // One interned copy, whichever thread reads it.
        let other = std::thread::spawn(move || postcard::from_bytes::<TypeName>(&wire).unwrap())
            .join()
            .unwrap();
        assert!(std::ptr::eq(back.0, other.0));
        assert!(postcard::from_bytes::<KeyText>(&[5, b'a']).is_err());
        assert!(postcard::from_bytes::<TypeName>(&[0xff]).is_err());
    }
}
