//! How iptables commands run: for real (detecting the nft or legacy binaries as istio-iptables
//! does, tools/istio-iptables/pkg/dependencies) or recorded for a dry run, line for line as
//! Istio's DependenciesStub records them (the goldens are that record).

use std::io::Write;
use std::process::{Command, Stdio};

/// Which of a binary set's three programs to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Iptables,
    Save,
    Restore,
}

/// The binaries of one IP family, as detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesVersion {
    pub binary: String,
    pub save_binary: String,
    pub restore_binary: String,
    /// (major, minor, patch) from `-save --version`; (0, 0, 0) when unknown.
    pub version: (u32, u32, u32),
    pub legacy: bool,
    pub existing_rules: bool,
}

impl IptablesVersion {
    /// The binary set named `binary` (iptables, ip6tables-nft...) without probing it.
    pub fn named(binary: &str) -> IptablesVersion {
        IptablesVersion {
            binary: binary.into(),
            save_binary: format!("{binary}-save"),
            restore_binary: format!("{binary}-restore"),
            version: (0, 0, 0),
            legacy: false,
            existing_rules: false,
        }
    }

    pub fn program(&self, cmd: Cmd) -> &str {
        match cmd {
            Cmd::Iptables => &self.binary,
            Cmd::Save => &self.save_binary,
            Cmd::Restore => &self.restore_binary,
        }
    }

    /// Legacy iptables from 1.6.2 takes the xtables lock; nf_tables needs none.
    fn takes_lock(&self) -> bool {
        self.legacy && self.version >= (1, 6, 2)
    }
}

/// What istio-iptables needs from the system.
pub trait Dependencies {
    /// Runs `cmd` of `ver` with `args`, feeding `stdin`; its standard output.
    fn run(
        &mut self,
        cmd: Cmd,
        ver: &IptablesVersion,
        stdin: Option<&str>,
        args: &[String],
    ) -> Result<String, String>;
    fn detect(&mut self, ipv6: bool) -> Result<IptablesVersion, String>;
}

/// Records what would run, as istio-iptables' DependenciesStub: a restore's input line by
/// line, any other command as its command line. Every command succeeds with no output.
#[derive(Debug, Default)]
pub struct DryRun {
    pub executed: Vec<String>,
}

impl DryRun {
    /// The record, one line each (what `--dry-run` prints).
    pub fn output(&self) -> String {
        self.executed.iter().map(|l| format!("{l}\n")).collect()
    }
}

impl Dependencies for DryRun {
    fn run(
        &mut self,
        cmd: Cmd,
        ver: &IptablesVersion,
        stdin: Option<&str>,
        args: &[String],
    ) -> Result<String, String> {
        match stdin {
            Some(input) => self.executed.extend(input.lines().map(String::from)),
            None => {
                let mut line = ver.program(cmd).to_string();
                for a in args {
                    line.push(' ');
                    line.push_str(a);
                }
                self.executed.push(line);
            }
        }
        Ok(String::new())
    }

    fn detect(&mut self, ipv6: bool) -> Result<IptablesVersion, String> {
        Ok(IptablesVersion::named(if ipv6 {
            "ip6tables"
        } else {
            "iptables"
        }))
    }
}

/// Runs the binaries.
#[derive(Debug, Default)]
pub struct Real {
    /// Use the legacy binaries only (--force-legacy-iptables).
    pub force_legacy: bool,
}

impl Dependencies for Real {
    fn run(
        &mut self,
        cmd: Cmd,
        ver: &IptablesVersion,
        stdin: Option<&str>,
        args: &[String],
    ) -> Result<String, String> {
        let mut args = args.to_vec();
        if cmd != Cmd::Save && ver.takes_lock() {
            args.push("--wait=30".into());
        }
        exec(ver.program(cmd), &args, stdin)
    }

    /// Istio's choice: the legacy binaries if rules already exist there, else the nft ones if
    /// they work, else the unsuffixed binaries.
    fn detect(&mut self, ipv6: bool) -> Result<IptablesVersion, String> {
        let base = if ipv6 { "ip6tables" } else { "iptables" };
        let legacy = probe(&format!("{base}-legacy"));
        if self.force_legacy {
            return legacy;
        }
        if let Ok(v) = &legacy
            && v.existing_rules
        {
            return legacy;
        }
        probe(&format!("{base}-nft")).or_else(|_| probe(base))
    }
}

/// Runs a program; its stdout, or an error with its stderr.
pub fn exec(program: &str, args: &[String], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("{program}: writing its input: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// shouldUseBinaryForCurrentContext: `-save` must run; its `--version` tells nft from legacy;
/// a no-op rule must be addable to `filter` (kernel support); [`has_rules`] on the dump.
fn probe(binary: &str) -> Result<IptablesVersion, String> {
    let mut v = IptablesVersion::named(binary);
    let dump = exec(&v.save_binary, &[], None)?;
    let ver = Command::new(&v.save_binary).arg("--version").output();
    match ver {
        Ok(o)
            if o.status.success()
                && !String::from_utf8_lossy(&o.stderr).contains("unrecognized option") =>
        {
            let text = String::from_utf8_lossy(&o.stdout);
            v.version = parse_version(&text).ok_or_else(|| {
                format!("iptables version {text:?} is not a valid version string")
            })?;
            v.legacy = !text.contains("nf_tables");
        }
        _ => v.legacy = true,
    }
    let test: Vec<String> = ["-t", "filter", "-A", "INPUT", "-p", "255", "-j", "DROP"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    exec(binary, &test, None).map_err(|e| {
        format!("iptables binary {binary} has no loaded kernel support and cannot be used: {e}")
    })?;
    let mut delete = test.clone();
    delete[2] = "-D".into();
    let _ = exec(binary, &delete, None);
    v.existing_rules = has_rules(&dump);
    Ok(v)
}

/// Whether a `-save` dump holds rules. Istio counts three or more lines, but a table that once
/// held a rule (its own no-op probe rule, say) is dumped with its chain headers and no rule:
/// remora looks for a rule line, so a re-run (or `--cleanup-only`) picks the same binaries.
pub fn has_rules(dump: &str) -> bool {
    dump.lines()
        .any(|l| l.starts_with("-A ") || l.starts_with("-I "))
}

/// The version in `iptables-save v1.8.9 (nf_tables)`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let start = text
        .match_indices('v')
        .map(|(i, _)| i + 1)
        .find(|i| text[*i..].starts_with(|c: char| c.is_ascii_digit()))?;
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = digits.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_exist_only_with_a_rule_line() {
        let empty = "# Generated by iptables-save v1.8.9\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n";
        assert!(!has_rules(empty));
        assert!(!has_rules(""));
        assert!(has_rules(
            "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n"
        ));
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_version("iptables-save v1.8.9 (nf_tables)\n"),
            Some((1, 8, 9))
        );
        assert_eq!(parse_version("iptables-save v1.6.1\n"), Some((1, 6, 1)));
        assert_eq!(parse_version("nothing"), None);
    }

    #[test]
    fn dry_run_records_restore_input_by_line_and_commands_whole() {
        let mut d = DryRun::default();
        let v4 = d.detect(false).unwrap();
        d.run(Cmd::Save, &v4, None, &[]).unwrap();
        d.run(
            Cmd::Restore,
            &v4,
            Some("* nat\nCOMMIT\n"),
            &["--noflush".into()],
        )
        .unwrap();
        d.run(
            Cmd::Iptables,
            &v4,
            None,
            &["-t".into(), "nat".into(), "-F".into(), "X".into()],
        )
        .unwrap();
        assert_eq!(
            d.output(),
            "iptables-save\n* nat\nCOMMIT\niptables -t nat -F X\n"
        );
    }

    #[test]
    fn legacy_takes_the_lock_from_1_6_2() {
        let mut v = IptablesVersion::named("iptables-legacy");
        v.legacy = true;
        v.version = (1, 8, 7);
        assert!(v.takes_lock());
        v.version = (1, 6, 1);
        assert!(!v.takes_lock());
        v.legacy = false;
        v.version = (1, 8, 7);
        assert!(!v.takes_lock());
    }
}
