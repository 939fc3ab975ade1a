//! What translation reads from outside its protos: the files and environment variables that
//! data sources (`filename`, `environment_variable`) name. Translation never reads them itself:
//! it asks here, a name not read yet is noted as wanted, and the loader (`config::inputs`) reads
//! what was wanted and translates again with the contents. So translation is a pure function of
//! the protos and its context, and a translation given no inputs (the fuzz targets) does no I/O.
//! A directory (a runtime disk layer) is read the same way: its regular files, by path.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// The contents read for one translation, and what it asked for that was not read yet.
#[derive(Debug, Default)]
pub struct Inputs {
    /// File name → its bytes, or why it could not be read.
    files: BTreeMap<String, Result<Bytes, String>>,
    /// Variable name → its value (`None`: not set, or not UTF-8).
    env: BTreeMap<String, Option<String>>,
    /// Directory → its files (`None`: it does not exist), or why it could not be read.
    dirs: BTreeMap<String, Result<Option<DirFiles>, String>>,
    /// Path → whether it is a directory (a watched file's parent).
    is_dir: BTreeMap<String, bool>,
    wanted: Mutex<Wanted>,
}

/// Names translation asked for that [`Inputs`] does not hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub files: BTreeSet<String>,
    pub env: BTreeSet<String>,
    pub dirs: BTreeSet<String>,
    pub is_dir: BTreeSet<String>,
}

impl Wanted {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.env.is_empty()
            && self.dirs.is_empty()
            && self.is_dir.is_empty()
    }
}

/// A directory tree's regular files: the path under the directory (`/`-separated) and the
/// contents, in path order.
pub type DirFiles = Vec<(String, Bytes)>;

/// A name that has not been read: translation notes it, and the loader reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRead;

impl Inputs {
    /// No contents at all (every file or variable asked for is [`NotRead`]).
    pub fn none() -> Self {
        Self::default()
    }

    /// These contents plus `files` and `env` (read by the loader).
    pub fn with(
        &self,
        files: impl IntoIterator<Item = (String, Result<Bytes, String>)>,
        env: impl IntoIterator<Item = (String, Option<String>)>,
    ) -> Self {
        let mut out = Self {
            files: self.files.clone(),
            env: self.env.clone(),
            dirs: self.dirs.clone(),
            is_dir: self.is_dir.clone(),
            wanted: Mutex::default(),
        };
        out.files.extend(files);
        out.env.extend(env);
        out
    }

    /// These contents plus directories read by the loader.
    pub fn with_dirs(
        mut self,
        dirs: impl IntoIterator<Item = (String, Result<Option<DirFiles>, String>)>,
        is_dir: impl IntoIterator<Item = (String, bool)>,
    ) -> Self {
        self.dirs.extend(dirs);
        self.is_dir.extend(is_dir);
        self
    }

    /// Whether a path is a directory.
    pub fn is_dir(&self, name: &str) -> Result<bool, NotRead> {
        match self.is_dir.get(name) {
            Some(b) => Ok(*b),
            None => {
                self.want().is_dir.insert(name.to_string());
                Err(NotRead)
            }
        }
    }

    /// A directory's files (`Ok(None)`: it does not exist; `Err(reason)`: it could not be read).
    pub fn dir(&self, name: &str) -> Result<Result<Option<&DirFiles>, &str>, NotRead> {
        match self.dirs.get(name) {
            Some(r) => Ok(r.as_ref().map(Option::as_ref).map_err(String::as_str)),
            None => {
                self.want().dirs.insert(name.to_string());
                Err(NotRead)
            }
        }
    }

    /// A file's bytes (`Err(reason)`: it could not be read).
    pub fn file(&self, name: &str) -> Result<Result<&Bytes, &str>, NotRead> {
        match self.files.get(name) {
            Some(r) => Ok(r.as_ref().map_err(String::as_str)),
            None => {
                self.want().files.insert(name.to_string());
                Err(NotRead)
            }
        }
    }

    /// An environment variable's value (`None`: not set).
    pub fn env(&self, name: &str) -> Result<Option<&str>, NotRead> {
        match self.env.get(name) {
            Some(v) => Ok(v.as_deref()),
            None => {
                self.want().env.insert(name.to_string());
                Err(NotRead)
            }
        }
    }

    /// What was asked for and not held, since the last call.
    pub fn take_wanted(&self) -> Wanted {
        std::mem::take(&mut *self.want())
    }

    fn want(&self) -> std::sync::MutexGuard<'_, Wanted> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_not_held_are_wanted_once() {
        let inputs = Inputs::none();
        assert_eq!(inputs.file("/a"), Err(NotRead));
        assert_eq!(inputs.file("/a"), Err(NotRead));
        assert_eq!(inputs.env("HOME"), Err(NotRead));
        let wanted = inputs.take_wanted();
        assert_eq!(wanted.files.into_iter().collect::<Vec<_>>(), ["/a"]);
        assert_eq!(wanted.env.into_iter().collect::<Vec<_>>(), ["HOME"]);
        assert!(inputs.take_wanted().is_empty());

        let read = inputs.with(
            [
                ("/a".to_string(), Ok(Bytes::from_static(b"x"))),
                ("/b".to_string(), Err("No such file".to_string())),
            ],
            [("HOME".to_string(), None)],
        );
        assert_eq!(read.file("/a"), Ok(Ok(&Bytes::from_static(b"x"))));
        assert_eq!(read.file("/b"), Ok(Err("No such file")));
        assert_eq!(read.env("HOME"), Ok(None));
        assert!(read.take_wanted().is_empty());
    }
}
