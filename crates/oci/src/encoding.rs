//! Byte-exact encodings: the same image built twice has the same digests.

use std::io::Write;

use crate::error::{ArchiveError, io_err};

/// JSON with object keys sorted: oci-spec keeps labels and annotations in `HashMap`s, whose
/// order changes from run to run, and a digest must not.
pub(crate) fn canonical_json(value: &impl serde::Serialize) -> Vec<u8> {
    let value = serde_json::to_value(value).expect("OCI types serialize to JSON");
    serde_json::to_vec(&value).expect("a JSON value serializes")
}

/// Appends a regular file with a fixed timestamp, so archives are reproducible.
pub(crate) fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<(), ArchiveError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, bytes)
        .map_err(io_err(format!("write {path}")))
}
