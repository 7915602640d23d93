//! Serde helpers for Go's JSON conventions: `null` and missing mean the zero value.

use serde::{Deserialize, Deserializer};

/// Reads `null` as the type's default (Go's nil slice or map), anything else as usual.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Whether a value equals its type's default; used to omit zero fields like Go's `omitempty`.
pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
