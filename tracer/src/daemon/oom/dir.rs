//! The `--oom-dir` directory, made ready when the agent starts.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Why `--oom-dir` cannot be used (checked at start: a post-mortem that
/// cannot be written at OOM time is lost).
#[derive(Debug, thiserror::Error)]
pub enum OomDirError {
    #[error("--oom-dir {path}: cannot create it")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--oom-dir {path} is not a directory")]
    NotDirectory { path: PathBuf },
    #[error("--oom-dir {path} is not writable")]
    NotWritable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Makes `--oom-dir` ready: created with its parents when missing (as
/// `mkdir -p`), then proven writable by creating and removing a file in it.
/// A mode check would not do: root writes through mode bits, but not on a
/// read-only mount (EROFS) or into an immutable directory (EPERM).
pub fn prepare_dir(dir: &Path) -> Result<(), OomDirError> {
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(OomDirError::NotDirectory {
                path: dir.to_path_buf(),
            })
        }
        Ok(_) => {}
        Err(_) => fs::create_dir_all(dir).map_err(|source| OomDirError::Create {
            path: dir.to_path_buf(),
            source,
        })?,
    }
    let probe = dir.join(format!(".offheap-probe.{}", std::process::id()));
    fs::File::create(&probe).map_err(|source| OomDirError::NotWritable {
        path: dir.to_path_buf(),
        source,
    })?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::one_line;

    #[test]
    fn a_missing_dir_is_created_with_its_parents() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b/c");
        prepare_dir(&d).unwrap();
        assert!(d.is_dir());
        // Nothing left behind by the check.
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
        prepare_dir(&d).unwrap();
    }

    #[test]
    fn a_file_or_an_unwritable_dir_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("file");
        fs::write(&f, "").unwrap();
        assert_eq!(
            one_line(&prepare_dir(&f).unwrap_err()),
            format!("--oom-dir {} is not a directory", f.display())
        );
        let under = f.join("sub");
        let e = one_line(&prepare_dir(&under).unwrap_err());
        assert!(
            e.starts_with(&format!(
                "--oom-dir {}: cannot create it: ",
                under.display()
            )),
            "{e}"
        );
        // /proc: a directory where even root creates no file.
        let e = one_line(&prepare_dir(Path::new("/proc")).unwrap_err());
        assert!(e.starts_with("--oom-dir /proc is not writable: "), "{e}");
    }
}
