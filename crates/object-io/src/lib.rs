//! # object-io: immutable files in a folder or an object store, read back verified
//!
//! A [`Location`] is a local folder or a prefix of an object store (`s3://`, `gs://`, `az://`,
//! through Apache Arrow's [`object_store`], credentials from the environment as its builders read
//! them). It offers what a store of write-once files needs, synchronously: whole-file writes that
//! a reader never sees half done ([`Location::put`]: a rename locally, a multipart upload with
//! large parts sent concurrently remotely), whole reads, listing, and range reads verified by
//! per-block SHA-256 digests ([`BlockDigests`], [`Location::get_verified_range`]) so that a part
//! of a large file is checked without reading the rest.
//!
//! ```
//! use object_io::{BlockDigests, Location};
//!
//! # fn main() -> Result<(), object_io::ObjectError> {
//! let dir = tempfile::tempdir().expect("a temporary folder");
//! let location = Location::parse(&dir.path().display().to_string())?;
//! let bytes: Vec<u8> = (0..100u8).collect();
//! let digests = BlockDigests::of(&bytes, 16);
//! location.put("numbers.bin", bytes.clone().into())?;
//! let middle = location.get_verified_range("numbers.bin", 40..45, 100, &digests)?;
//! assert_eq!(&middle[..], &bytes[40..45]);
//!
//! std::fs::write(dir.path().join("numbers.bin"), vec![0u8; 100]).expect("a writable folder");
//! let error = location.get_verified_range("numbers.bin", 40..45, 100, &digests).unwrap_err();
//! assert!(error.to_string().contains("block 2"));
//! # Ok(())
//! # }
//! ```

mod blocks;
mod location;
mod runtime;

pub use blocks::{BlockDigests, DEFAULT_BLOCK_BYTES, hex_digest, hex_sha256};
pub use location::{DEFAULT_IN_FLIGHT, DEFAULT_PART_BYTES, Location};

/// What went wrong, always naming the file or location.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// A local file could not be read or written.
    #[error(transparent)]
    File(#[from] file_io::FileError),
    /// The object store refused or failed a request.
    #[error("{location}: {source}")]
    Store {
        /// The object or prefix.
        location: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// The bytes read are not the bytes written.
    #[error("{location}: {detail}")]
    Corrupt {
        /// The object or file.
        location: String,
        /// What differs.
        detail: String,
    },
    /// A file name that is not a plain name ([`file_io::check_name`]): it could reach outside
    /// the location.
    #[error("{location}: {source}")]
    Name {
        /// The location (folder or prefix) the name was given to.
        location: String,
        /// What is wrong with the name.
        #[source]
        source: file_io::NameError,
    },
    /// A request that cannot be served as asked.
    #[error("{0}")]
    Invalid(String),
}

impl ObjectError {
    fn store(location: impl Into<String>, source: object_store::Error) -> Self {
        Self::Store {
            location: location.into(),
            source,
        }
    }

    fn corrupt(location: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            location: location.into(),
            detail: detail.into(),
        }
    }

    fn io(location: impl Into<String>, source: std::io::Error) -> Self {
        Self::File(file_io::FileError::io(location.into(), source))
    }
}

/// This crate's results.
pub type Result<T> = std::result::Result<T, ObjectError>;
