//! File formats and Parquet codecs: the catalogue's [`Format`] and [`Compression`], and the errors of the
//! data library when a name or an extension is not one of them.

pub use redline_catalog::values::{Compression, Format, FormatError, HandleMissing};
