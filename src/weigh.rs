//! Declaring what an entry costs in memory.
//!
//! Every insert states the entry's size in bytes: it is what the memory
//! budget counts, so it should be the entry's real heap footprint. [`Weigh`]
//! computes it for common types, and is easy to implement for your own by
//! adding up the fields:
//!
//! ```
//! use spillway::Weigh;
//!
//! struct Posting { doc_ids: Vec<u32>, term: String }
//!
//! impl Weigh for Posting {
//!     fn weigh(&self) -> usize {
//!         std::mem::size_of::<Self>() + self.doc_ids.heap_bytes() + self.term.heap_bytes()
//!     }
//! }
//!
//! let p = Posting { doc_ids: vec![1, 2, 3], term: "rust".into() };
//! assert!(p.weigh() >= 3 * 4 + 4);
//! ```

use std::sync::Arc;

/// The memory an entry costs, for the `size_bytes` of an insert.
///
/// [`Weigh::weigh`] is the whole value (its inline size plus what it owns
/// on the heap); [`Weigh::heap_bytes`] is only the heap part, for adding
/// up fields inside a struct whose own size is counted once.
///
/// ```
/// use spillway::Weigh;
/// assert_eq!(vec![0u8; 1000].heap_bytes(), 1000);
/// assert_eq!(vec![0u8; 1000].weigh(), 1000 + std::mem::size_of::<Vec<u8>>());
/// assert_eq!(7u64.weigh(), 8);
/// ```
pub trait Weigh {
    /// Heap bytes this value owns (its allocated capacity), excluding its
    /// own inline size.
    fn heap_bytes(&self) -> usize {
        0
    }

    /// Inline size plus heap bytes: what to pass as `size_bytes`.
    fn weigh(&self) -> usize
    where
        Self: Sized,
    {
        std::mem::size_of::<Self>() + self.heap_bytes()
    }
}

macro_rules! inline_only {
    ($($t:ty),*) => { $(impl Weigh for $t {})* };
}

inline_only!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    bool,
    char,
    ()
);

impl Weigh for String {
    fn heap_bytes(&self) -> usize {
        self.capacity()
    }
}

impl<T: Weigh> Weigh for Vec<T> {
    fn heap_bytes(&self) -> usize {
        self.capacity() * std::mem::size_of::<T>()
            + self.iter().map(Weigh::heap_bytes).sum::<usize>()
    }
}

impl<T: Weigh> Weigh for Box<[T]> {
    fn heap_bytes(&self) -> usize {
        std::mem::size_of_val::<[T]>(self) + self.iter().map(Weigh::heap_bytes).sum::<usize>()
    }
}

impl Weigh for Box<str> {
    fn heap_bytes(&self) -> usize {
        self.len()
    }
}

impl<T: Weigh> Weigh for Option<T> {
    fn heap_bytes(&self) -> usize {
        self.as_ref().map_or(0, Weigh::heap_bytes)
    }
}

/// An `Arc`'s pointee counted in full: the cache holds the entry alive.
impl<T: Weigh> Weigh for Arc<T> {
    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<T>() + T::heap_bytes(self)
    }
}

impl Weigh for bytes::Bytes {
    fn heap_bytes(&self) -> usize {
        self.len()
    }
}

impl<A: Weigh, B: Weigh> Weigh for (A, B) {
    fn heap_bytes(&self) -> usize {
        self.0.heap_bytes() + self.1.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_values_count_every_allocation() {
        let v: Vec<String> = vec![String::with_capacity(100), String::with_capacity(50)];
        let expected =
            std::mem::size_of::<Vec<String>>() + v.capacity() * std::mem::size_of::<String>() + 150;
        assert_eq!(v.weigh(), expected);
        let arc = Arc::new(vec![0u32; 10]);
        assert_eq!(
            arc.weigh(),
            std::mem::size_of::<Arc<Vec<u32>>>() + std::mem::size_of::<Vec<u32>>() + 40
        );
        assert_eq!(Some(String::from("abc")).heap_bytes(), 3);
        assert_eq!(None::<String>.heap_bytes(), 0);
    }
}
