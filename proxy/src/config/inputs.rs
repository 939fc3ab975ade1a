//! The loader's half of [`crate::model::inputs`]: translate, read the files and variables the
//! translation asked for, and translate again with their contents, until it asks for nothing
//! new. The reading happens here, between translations, never inside one.

use crate::model::inputs::{DirFiles, Inputs, Wanted};
use bytes::Bytes;
use std::sync::Arc;

/// More rounds than any configuration needs: names come from the protos, not from file
/// contents, so the second round normally has everything.
const MAX_ROUNDS: usize = 16;

/// Run `translate` with the inputs it asks for.
pub fn translate<T>(mut translate: impl FnMut(Arc<Inputs>) -> T) -> T {
    let mut inputs = Arc::new(Inputs::none());
    let mut round = 1;
    loop {
        let out = translate(inputs.clone());
        let wanted = inputs.take_wanted();
        if wanted.is_empty() || round == MAX_ROUNDS {
            return out;
        }
        inputs = Arc::new(read(&inputs, wanted));
        round += 1;
    }
}

/// `inputs` plus what is `wanted`, read now.
fn read(inputs: &Inputs, wanted: Wanted) -> Inputs {
    let Wanted {
        files,
        env,
        dirs,
        is_dir,
    } = wanted;
    let files = files.into_iter().map(|name| {
        let contents = std::fs::read(&name)
            .map(Bytes::from)
            .map_err(|e| e.to_string());
        (name, contents)
    });
    let env = env.into_iter().map(|name| {
        let value = std::env::var(&name).ok();
        (name, value)
    });
    let dirs = dirs.into_iter().map(|name| {
        let files = read_dir_tree(&name);
        (name, files)
    });
    let is_dir = is_dir.into_iter().map(|name| {
        let b = std::path::Path::new(&name).is_dir();
        (name, b)
    });
    inputs.with(files, env).with_dirs(dirs, is_dir)
}

/// A directory tree's regular files (symbolic links followed), as Envoy's runtime disk layer
/// walks it: `Ok(None)` when the directory does not exist, an error past
/// [`crate::model::runtime::MAX_DISK_DEPTH`] levels or on an unreadable entry.
pub fn read_dir_tree(dir: &str) -> Result<Option<DirFiles>, String> {
    if !std::path::Path::new(dir).is_dir() {
        return Ok(None);
    }
    let mut out = Vec::new();
    walk(std::path::Path::new(dir), "", 1, &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Some(out))
}

fn walk(
    dir: &std::path::Path,
    prefix: &str,
    depth: usize,
    out: &mut DirFiles,
) -> Result<(), String> {
    use crate::model::runtime::MAX_DISK_DEPTH;
    if depth > MAX_DISK_DEPTH {
        return Err(format!("Walk recursion depth exceeded {MAX_DISK_DEPTH}"));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        // Followed, as Envoy's stat of each entry: a linked directory is walked.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // a dangling link is neither a file nor a directory
        };
        if meta.is_dir() {
            walk(&path, &rel, depth + 1, out)?;
        } else if meta.is_file() {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            out.push((rel, Bytes::from(bytes)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_is_run_again_with_what_it_asked_for() {
        let dir = std::env::temp_dir().join(format!("remora-inputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.txt");
        std::fs::write(&a, "contents").unwrap();
        let a = a.to_string_lossy().to_string();
        let missing = dir.join("missing").to_string_lossy().to_string();
        let mut rounds = 0;
        let out = translate(|inputs| {
            rounds += 1;
            // A second file is only asked for once the first is read.
            let first = inputs.file(&a).ok()?.ok()?.clone();
            let second = inputs.file(&missing).ok()?.err()?.to_string();
            Some((first, second))
        });
        let (first, second) = out.expect("both answered");
        assert_eq!(first, Bytes::from_static(b"contents"));
        assert!(second.contains("No such file"), "{second}");
        assert_eq!(rounds, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_translation_asking_for_nothing_runs_once() {
        let mut rounds = 0;
        translate(|_| rounds += 1);
        assert_eq!(rounds, 1);
    }
}
