//! postcard encoding of stored values, with errors that say what and whose value was damaged.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::GroupId;

pub(crate) fn encode<T: Serialize>(value: &T, what: &'static str, group: GroupId) -> Result<Vec<u8>, Error> {
    postcard::to_allocvec(value).map_err(|source| Error::Encode { what, group, source })
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str, group: GroupId) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|source| Error::Decode { what, group, source })
}
