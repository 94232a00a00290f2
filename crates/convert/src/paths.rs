//! The data root sandbox and atomic output files.
//!
//! Every path a task receives is relative to a [`DataRoot`]; absolute paths and `..` are refused
//! before the filesystem is touched, and resolved paths are checked again after symlinks are
//! followed. Outputs are written to a hidden temporary file in the destination directory and
//! renamed into place, so a crash or a failed conversion never leaves a partial file under the
//! final name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{DataError, PathError};

pub use redline_catalog::values::validate_relative_path;

/// The directory every task path is resolved in (`REDLINE_DATA_DIR`, `./data` by default; the
/// caller reads the environment, this library never does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRoot {
    dir: PathBuf,
}

// === impl DataRoot ===

impl DataRoot {
    /// A data root at `dir` (created on first write if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Resolves an existing input file, refusing escapes (including through symlinks).
    pub fn resolve_input(&self, rel: &str) -> Result<PathBuf, DataError> {
        validate_relative_path(rel)?;
        let path = self.dir.join(rel);
        let real = match path.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DataError::NotFound(rel.to_owned()));
            }
            Err(e) => return Err(DataError::io(&path, e)),
        };
        self.check_inside(rel, &real)?;
        if !real.is_file() {
            return Err(DataError::InvalidInput(format!("'{rel}' is not a file")));
        }
        Ok(real)
    }

    /// Resolves the first of `candidates` that exists, or `NotFound` naming the first.
    pub fn resolve_first(&self, candidates: &[String]) -> Result<PathBuf, DataError> {
        for c in candidates {
            match self.resolve_input(c) {
                Err(DataError::NotFound(_)) => {}
                other => return other,
            }
        }
        Err(DataError::NotFound(
            candidates.first().cloned().unwrap_or_default(),
        ))
    }

    /// Resolves an output path, creating its parent directories inside the root.
    pub fn resolve_output(&self, rel: &str) -> Result<PathBuf, DataError> {
        validate_relative_path(rel)?;
        let path = self.dir.join(rel);
        let parent = path
            .parent()
            .ok_or_else(|| DataError::InvalidInput(format!("'{rel}' has no parent directory")))?;
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        let real_parent = parent
            .canonicalize()
            .map_err(|e| DataError::io(parent, e))?;
        self.check_inside(rel, &real_parent)?;
        let name = path
            .file_name()
            .ok_or_else(|| DataError::InvalidInput(format!("'{rel}' has no file name")))?;
        Ok(real_parent.join(name))
    }

    fn check_inside(&self, rel: &str, real: &Path) -> Result<(), DataError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| DataError::io(&self.dir, e))?;
        let root = self
            .dir
            .canonicalize()
            .map_err(|e| DataError::io(&self.dir, e))?;
        if real.starts_with(&root) {
            Ok(())
        } else {
            Err(PathError::Escapes(rel.to_owned()).into())
        }
    }

    /// `path` relative to the root, for results (falls back to the full path).
    pub fn relative(&self, path: &Path) -> String {
        let root = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
        path.strip_prefix(&root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }
}

/// An output being written: a hidden temporary file beside the destination, renamed into place
/// by [`OutputFile::commit`] and deleted if dropped uncommitted.
///
/// An output written for an owner (a task id) leaves a marker beside it, `.<name>.redline-task`, holding
/// that owner, so the same task delivered again (its worker died after writing, before recording the
/// outcome) may replace its own output, while another task still may not without `overwrite`. The marker
/// is written after the output is in place: a crash between the two leaves an output without a marker,
/// which errs towards "already exists", never towards replacing someone else's file.
pub struct OutputFile {
    writer: BufWriter<File>,
    temp: tempfile::TempPath,
    dest: PathBuf,
    overwrite: bool,
    owner: Option<String>,
}

/// The marker naming the owner of `dest`.
fn owner_marker(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.redline-task"))
}

/// Whether `owner` wrote the output at `dest`.
fn owned_by(dest: &Path, owner: Option<&str>) -> bool {
    owner.is_some_and(|o| {
        std::fs::read_to_string(owner_marker(dest)).is_ok_and(|written| written == o)
    })
}

impl std::fmt::Debug for OutputFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputFile")
            .field("dest", &self.dest)
            .field("overwrite", &self.overwrite)
            .finish_non_exhaustive()
    }
}

// === impl OutputFile ===

impl OutputFile {
    /// Whether an output at `dest` could be written for `owner`: it does not exist, `overwrite` is set, or
    /// `owner` wrote it.
    pub fn may_write(dest: &Path, overwrite: bool, owner: Option<&str>) -> bool {
        overwrite || !dest.exists() || owned_by(dest, owner)
    }

    /// Starts an output at `dest` for `owner`; fails at once unless [`Self::may_write`], so no work is
    /// wasted on a conversion whose result could not be kept.
    pub fn create(dest: &Path, overwrite: bool, owner: Option<&str>) -> Result<Self, DataError> {
        if !Self::may_write(dest, overwrite, owner) {
            return Err(DataError::AlreadyExists(dest.display().to_string()));
        }
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        // Temporary files are created owner-only; the renamed output should get the usual mode
        // (0644 narrowed by the umask) like any file the process creates.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
        let tmp = builder
            .tempfile_in(&dir)
            .map_err(|e| DataError::io(&dir, e))?;
        let (file, temp) = tmp.into_parts();
        Ok(Self {
            writer: BufWriter::with_capacity(1 << 20, file),
            temp,
            dest: dest.to_path_buf(),
            overwrite,
            owner: owner.map(str::to_owned),
        })
    }

    /// The buffered writer of the temporary file.
    pub fn writer(&mut self) -> &mut BufWriter<File> {
        &mut self.writer
    }

    /// Flushes, syncs and renames the temporary file onto the destination, then marks its owner.
    pub fn commit(self) -> Result<(), DataError> {
        let OutputFile {
            writer,
            temp,
            dest,
            overwrite,
            owner,
        } = self;
        let file = writer
            .into_inner()
            .map_err(|e| DataError::io(&dest, e.into_error()))?;
        file.sync_all().map_err(|e| DataError::io(&dest, e))?;
        drop(file);
        let res = if overwrite || owned_by(&dest, owner.as_deref()) {
            temp.persist(&dest)
        } else {
            // Refuse to clobber a file that appeared while we were converting.
            temp.persist_noclobber(&dest)
        };
        res.map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                DataError::AlreadyExists(dest.display().to_string())
            } else {
                DataError::io(&dest, e.error)
            }
        })?;
        let marker = owner_marker(&dest);
        match owner {
            Some(owner) => {
                // Atomically, like the output: a torn marker would name nobody.
                let dir = dest.parent().unwrap_or(Path::new("."));
                let mut tmp =
                    tempfile::NamedTempFile::new_in(dir).map_err(|e| DataError::io(dir, e))?;
                tmp.write_all(owner.as_bytes())
                    .map_err(|e| DataError::io(&marker, e))?;
                tmp.persist(&marker)
                    .map_err(|e| DataError::io(&marker, e.error))?;
            }
            // An output without an owner (an operator's `redline convert --overwrite`) is nobody's.
            None => {
                let _ = std::fs::remove_file(&marker);
            }
        }
        Ok(())
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_out_of_the_root_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let outside = tempfile::tempdir()?;
        std::fs::write(outside.path().join("secret.csv"), "a\n1\n")?;
        let root = tempfile::tempdir()?;
        std::os::unix::fs::symlink(outside.path(), root.path().join("link"))?;
        let dr = DataRoot::new(root.path());
        assert!(matches!(
            dr.resolve_input("link/secret.csv"),
            Err(DataError::Path(PathError::Escapes(_)))
        ));
        assert!(matches!(
            dr.resolve_output("link/out.csv"),
            Err(DataError::Path(PathError::Escapes(_)))
        ));
        Ok(())
    }

    #[test]
    fn uncommitted_output_leaves_nothing_and_existing_files_are_kept()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let dest = dir.path().join("out.csv");
        {
            let mut out = OutputFile::create(&dest, false, None)?;
            out.write_all(b"partial")?;
        }
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
        std::fs::write(&dest, "old")?;
        assert!(matches!(
            OutputFile::create(&dest, false, None),
            Err(DataError::AlreadyExists(_))
        ));
        let mut out = OutputFile::create(&dest, true, None)?;
        out.write_all(b"new")?;
        out.commit()?;
        assert_eq!(std::fs::read_to_string(&dest)?, "new");
        Ok(())
    }
}
