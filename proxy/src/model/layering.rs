//! The configuration pipeline's layering, checked: `model/` (protos → validated model) and
//! `config/` (bytes → protos) name nothing outside themselves in this crate, so translation can
//! never reach the runtime (stats, sockets, tasks, the request path) and the runtime depends on
//! the model, never the reverse.
//!
//! Every `.rs` file under `src/model` and `src/config` is read with its comments and literals
//! blanked; every `crate::` path (`$crate::` too, and each branch of a `crate::{…}` group) must
//! start with an allowed module, and a `super::` chain that climbs to the crate root counts as a
//! `crate::` path (`super::super::x` in `model/listener.rs`'s `mod tests` is `model::x`;
//! `super::x` in `model/mod.rs` is the root's `x`). No other module is allowed: the crate's
//! pure helpers live in the runtime modules, and a parsed configuration type the runtime also
//! needs belongs in `model/` (as `model::format`, `model::response_flags` do).

use std::path::{Path, PathBuf};

/// The modules `model/` and `config/` may name.
const ALLOWED: &[&str] = &["model", "config"];

#[test]
fn model_and_config_import_nothing_from_the_runtime() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut files = 0;
    for layer in ALLOWED {
        let mut paths = Vec::new();
        rust_files(&src.join(layer), &mut paths);
        for file in paths {
            files += 1;
            let rel = file.strip_prefix(&src).expect("under src");
            let text = std::fs::read_to_string(&file).expect("readable source");
            for (line, path) in violations(&module_of(rel), &text) {
                found.push(format!("proxy/src/{}:{line}: {path}", rel.display()));
            }
        }
    }
    assert!(
        files > 20,
        "only {files} files found under {}",
        src.display()
    );
    assert!(
        found.is_empty(),
        "model/ and config/ may name only {ALLOWED:?} in this crate; runtime modules depend on \
         the model, not the reverse:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_each_way_out() {
    let src = r##"use crate::config::{FieldPath, Result};
use crate::telemetry::format::FormatContext;
// crate::logging in a comment, "crate::http" in a string: not code.
const S: &str = r#"crate::http " "#;
const C: (char, char) = ('"', '\'');
fn f<'a>(x: &'a crate::model::X) -> crate::{model::A, stream_info::B} {}
macro_rules! m { () => { $crate::server::run() }; }
pub(crate) fn g() {}
mod tests {
    use super::super::tcp_proxy::T;
    use super::super::super::server::S;
    use super::super::super::{config::D, xds::E};
}
"##;
    let module = ["model".to_string(), "listener".to_string()];
    assert_eq!(
        violations(&module, src),
        [
            (2, "crate::telemetry".to_string()),
            (6, "crate::stream_info".to_string()),
            (7, "crate::server".to_string()),
            (11, "super::super::super::server".to_string()),
            (12, "super::super::super::xds".to_string()),
        ]
    );
    // In `mod.rs` the parent is the crate root.
    let src = "use super::xds::Y;\npub(super) fn h() {}\nmod tests {\n    use super::Z;\n}\n";
    assert_eq!(
        violations(&module_of(Path::new("model/mod.rs")), src),
        [(1, "super::xds".to_string())]
    );
}

/// Every `.rs` file under `dir`, recursively, in name order.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `model/listener.rs` → `[model, listener]`; `model/mod.rs` → `[model]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut m: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if m.last().is_some_and(|l| l == "mod") {
        m.pop();
    }
    m
}

/// The source with comments and the contents of string and character literals replaced by
/// spaces (newlines kept, so line numbers hold).
fn code_only(src: &str) -> Vec<char> {
    let c: Vec<char> = src.chars().collect();
    let mut out = c.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for ch in &mut out[from..to] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
    };
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(k).copied();
        if c[i] == '/' && at(i + 1) == Some('/') {
            let end = (i..c.len()).find(|&k| c[k] == '\n').unwrap_or(c.len());
            blank(&mut out, i, end);
            i = end;
        } else if c[i] == '/' && at(i + 1) == Some('*') {
            let (mut depth, mut k) = (1, i + 2);
            while k < c.len() && depth > 0 {
                if c[k] == '/' && at(k + 1) == Some('*') {
                    depth += 1;
                    k += 1;
                } else if c[k] == '*' && at(k + 1) == Some('/') {
                    depth -= 1;
                    k += 1;
                }
                k += 1;
            }
            blank(&mut out, i, k);
            i = k;
        } else if c[i] == 'r'
            && (i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2]))))
            && matches!(at(i + 1), Some('"' | '#'))
        {
            let hashes = (i + 1..c.len()).take_while(|&k| c[k] == '#').count();
            if at(i + 1 + hashes) != Some('"') {
                i += 1; // `r#ident`
                continue;
            }
            let start = i + 2 + hashes;
            let mut k = start;
            while k < c.len() && !(c[k] == '"' && (1..=hashes).all(|h| at(k + h) == Some('#'))) {
                k += 1;
            }
            blank(&mut out, start, k);
            i = k + 1 + hashes;
        } else if c[i] == '"' {
            let mut k = i + 1;
            while k < c.len() && c[k] != '"' {
                k += if c[k] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, k.min(c.len()));
            i = k + 1;
        } else if c[i] == '\'' {
            // A character literal (`'x'`, `'\n'`, `'\u{7f}'`), or a lifetime left as it is.
            let end = if at(i + 1) == Some('\\') {
                (i + 3..c.len()).find(|&k| c[k] == '\'')
            } else {
                (at(i + 2) == Some('\'')).then_some(i + 2)
            };
            match end {
                Some(e) => {
                    blank(&mut out, i + 1, e);
                    i = e + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Tokens: identifiers (`$crate` included), `::`, and single punctuation, with their lines.
fn tokens(code: &[char]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < code.len() {
        let ch = code[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphanumeric() || ch == '_' || ch == '$' {
            let start = i;
            i += 1;
            while i < code.len() && (code[i].is_alphanumeric() || code[i] == '_') {
                i += 1;
            }
            out.push((line, code[start..i].iter().collect()));
        } else if ch == ':' && code.get(i + 1) == Some(&':') {
            out.push((line, "::".into()));
            i += 2;
        } else {
            out.push((line, ch.to_string()));
            i += 1;
        }
    }
    out
}

/// The paths in `src` (a file of module `module`) that leave `ALLOWED`, with their lines.
fn violations(module: &[String], src: &str) -> Vec<(usize, String)> {
    let toks = tokens(&code_only(src));
    let tok = |k: usize| toks.get(k).map(|(_, t)| t.as_str());
    // The first segments a path names at `k` (an identifier, `*`, or a `{…}` group's branches).
    let firsts = |k: usize| -> Vec<String> {
        if tok(k) != Some("{") {
            return tok(k).map(str::to_string).into_iter().collect();
        }
        let (mut depth, mut out, mut k) = (0, Vec::new(), k);
        loop {
            match tok(k) {
                Some("{") => depth += 1,
                Some("}") => depth -= 1,
                Some(t) if depth == 1 && matches!(tok(k - 1), Some("{" | ",")) => {
                    out.push(t.to_string())
                }
                None => break,
                _ => {}
            }
            if depth == 0 {
                break;
            }
            k += 1;
        }
        out
    };
    let mut found = Vec::new();
    let mut depth = 0usize;
    // Inline modules (`mod tests {`), with the brace depth inside them.
    let mut inline: Vec<usize> = Vec::new();
    for (k, (line, t)) in toks.iter().enumerate() {
        match t.as_str() {
            "{" => {
                depth += 1;
                if k >= 2 && tok(k - 2) == Some("mod") {
                    inline.push(depth);
                }
            }
            "}" => {
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "crate" | "$crate"
                if tok(k + 1) == Some("::") && tok(k.wrapping_sub(1)) != Some("::") =>
            {
                for first in firsts(k + 2) {
                    if !ALLOWED.contains(&first.as_str()) {
                        found.push((*line, format!("crate::{first}")));
                    }
                }
            }
            "super" if tok(k + 1) == Some("::") && tok(k.wrapping_sub(1)) != Some("::") => {
                let mut ups = 1;
                while tok(k + 2 * ups) == Some("super") && tok(k + 2 * ups + 1) == Some("::") {
                    ups += 1;
                }
                if ups < module.len() + inline.len() {
                    continue; // still inside model/ or config/
                }
                let chain = vec!["super"; ups].join("::");
                for first in firsts(k + 2 * ups) {
                    if !ALLOWED.contains(&first.as_str()) || ups > module.len() + inline.len() {
                        found.push((*line, format!("{chain}::{first}")));
                    }
                }
            }
            _ => {}
        }
    }
    found
}
