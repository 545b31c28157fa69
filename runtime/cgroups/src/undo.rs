//! Undoable writes, for [`crate::Cgroup::apply_undoable`]: while a journal
//! is open on the calling thread, [`note`] keeps what each cgroup file held
//! before its first write ([`crate::write_file`] calls it), and the
//! [`Applied`] it yields writes those contents back.
//!
//! A thread-local journal rather than a parameter: the writes happen deep
//! in the v1 and v2 appliers, which stay as they are for every other
//! caller. The journal is closed again when the journaled call returns or
//! unwinds.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use crate::error::{CgroupError, Result};

thread_local! {
    static JOURNAL: RefCell<Option<Vec<(PathBuf, String)>>> = const { RefCell::new(None) };
}

/// Keeps what `path` holds, when a journal is open on this thread and
/// `path` has not been noted in it yet (the first content is the one to
/// restore). A file that cannot be read is not noted: its write fails too.
pub(crate) fn note(path: &Path) {
    JOURNAL.with(|j| {
        if let Some(before) = j.borrow_mut().as_mut()
            && !before.iter().any(|(p, _)| p == path)
            && let Ok(old) = std::fs::read_to_string(path)
        {
            before.push((path.to_path_buf(), old));
        }
    });
}

/// Closes the journal when dropped, also on unwinding.
struct Open;

impl Drop for Open {
    fn drop(&mut self) {
        JOURNAL.with(|j| j.borrow_mut().take());
    }
}

/// Runs `f` with a journal open on this thread; returns its result and
/// what it wrote.
pub(crate) fn journaled<T>(f: impl FnOnce() -> Result<T>) -> (Result<T>, Applied) {
    JOURNAL.with(|j| *j.borrow_mut() = Some(Vec::new()));
    let open = Open;
    let result = f();
    let before = JOURNAL.with(|j| j.borrow_mut().take()).unwrap_or_default();
    drop(open);
    (result, Applied { before })
}

/// The cgroup files an undoable apply wrote, with what each held before.
#[derive(Debug, Default)]
#[must_use = "an Applied is what undoes the apply"]
pub struct Applied {
    before: Vec<(PathBuf, String)>,
}

impl Applied {
    /// The files written, in the order of their first write.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.before.iter().map(|(p, _)| p.as_path())
    }

    /// Writes back what each file held, the last written first. A write
    /// the kernel refuses in that order (a v1 memory limit above the
    /// memory+swap limit not yet restored, a CFS quota against a period
    /// not yet restored) is tried again once the others are back. The
    /// error names the first file that could not be restored.
    pub fn undo(self) -> Result<()> {
        let mut pending: Vec<(PathBuf, String)> = self.before.into_iter().rev().collect();
        loop {
            let mut refused = Vec::new();
            let mut first_error = None;
            let count = pending.len();
            for (path, old) in pending {
                if let Err(source) = std::fs::write(&path, &old) {
                    first_error.get_or_insert_with(|| CgroupError::Write {
                        path: path.clone(),
                        value: old.trim_end().to_owned(),
                        source,
                    });
                    refused.push((path, old));
                }
            }
            match first_error {
                None => return Ok(()),
                // No progress in a pass: give up.
                Some(e) if refused.len() == count => return Err(e),
                Some(_) => pending = refused,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_keeps_the_first_content_and_undo_writes_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "1\n").unwrap();
        std::fs::write(&b, "x\n").unwrap();
        let (r, applied) = journaled(|| {
            crate::write_file(&a, "2")?;
            crate::write_file(&a, "3")?;
            crate::write_file(&b, "y")
        });
        r.unwrap();
        assert_eq!(
            applied.files().collect::<Vec<_>>(),
            [a.as_path(), b.as_path()]
        );
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "3");
        applied.undo().unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "1\n");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "x\n");
        // No journal open: nothing is noted.
        crate::write_file(&a, "4").unwrap();
        let (_, applied) = journaled(|| Ok(()));
        assert_eq!(applied.files().count(), 0);
    }

    #[test]
    fn undo_names_a_file_it_cannot_restore() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        std::fs::write(&gone, "1").unwrap();
        let (_, applied) = journaled(|| crate::write_file(&gone, "2"));
        std::fs::remove_file(&gone).unwrap();
        std::fs::create_dir(&gone).unwrap();
        let e = applied.undo().unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
    }
}
