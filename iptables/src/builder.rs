//! The rule builder: rules per IP family, rendered as istio-iptables renders them
//! (tools/istio-iptables/pkg/builder/iptables_builder_impl.go and helper.go): the
//! iptables-restore input, the `-C` checks, the undo (cleanup) commands and the guardrails.

use std::collections::{BTreeMap, HashSet};

/// Stands for the family-specific value in a rule given to [`RuleBuilder::append_versioned`].
pub const IP_VERSION_SPECIFIC: &str = "PLACEHOLDER_IP_VERSION_SPECIFIC";

/// Built-in chains and targets: never created (`-N`), flushed or deleted.
const BUILT_IN: &[&str] = &[
    "INPUT",
    "OUTPUT",
    "FORWARD",
    "PREROUTING",
    "POSTROUTING",
    "ACCEPT",
    "RETURN",
    "DROP",
];

fn built_in(chain: &str) -> bool {
    BUILT_IN.contains(&chain)
}

/// One rule: its chain, table and the iptables arguments (starting with `-A chain` or
/// `-I chain position`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub table: String,
    pub params: Vec<String>,
}

/// An iptables command line without the binary: `-t table ...`.
pub type Command = Vec<String>;

/// Rules for IPv4 and (when enabled) IPv6, in the order they were added.
#[derive(Debug, Clone, Default)]
pub struct RuleBuilder {
    v4: Vec<Rule>,
    v6: Vec<Rule>,
    ipv6: bool,
}

fn versioned<'a>(params: &[&'a str], value: &'a str) -> Vec<&'a str> {
    params
        .iter()
        .map(|p| if *p == IP_VERSION_SPECIFIC { value } else { *p })
        .collect()
}

fn strings(params: &[&str]) -> Vec<String> {
    params.iter().map(|s| s.to_string()).collect()
}

fn appended(chain: &str, table: &str, params: &[&str]) -> Rule {
    let mut p = vec!["-A".to_string(), chain.to_string()];
    p.extend(strings(params));
    Rule {
        chain: chain.into(),
        table: table.into(),
        params: p,
    }
}

fn inserted(chain: &str, table: &str, position: u32, params: &[&str]) -> Rule {
    let mut p = vec!["-I".to_string(), chain.to_string(), position.to_string()];
    p.extend(strings(params));
    Rule {
        chain: chain.into(),
        table: table.into(),
        params: p,
    }
}

impl RuleBuilder {
    /// A builder; IPv6 rules are only kept when `ipv6` is set (istio-iptables' EnableIPv6).
    pub fn new(ipv6: bool) -> Self {
        RuleBuilder {
            v4: Vec::new(),
            v6: Vec::new(),
            ipv6,
        }
    }

    pub fn append(&mut self, chain: &str, table: &str, params: &[&str]) {
        self.append_v4(chain, table, params);
        self.append_v6(chain, table, params);
    }

    pub fn append_v4(&mut self, chain: &str, table: &str, params: &[&str]) {
        self.v4.push(appended(chain, table, params));
    }

    pub fn append_v6(&mut self, chain: &str, table: &str, params: &[&str]) {
        if self.ipv6 {
            self.v6.push(appended(chain, table, params));
        }
    }

    pub fn insert(&mut self, chain: &str, table: &str, position: u32, params: &[&str]) {
        self.insert_v4(chain, table, position, params);
        self.insert_v6(chain, table, position, params);
    }

    pub fn insert_v4(&mut self, chain: &str, table: &str, position: u32, params: &[&str]) {
        self.v4.push(inserted(chain, table, position, params));
    }

    pub fn insert_v6(&mut self, chain: &str, table: &str, position: u32, params: &[&str]) {
        if self.ipv6 {
            self.v6.push(inserted(chain, table, position, params));
        }
    }

    /// Appends a dual-stack rule whose [`IP_VERSION_SPECIFIC`] argument is `v4` in the IPv4
    /// rule and `v6` in the IPv6 one.
    pub fn append_versioned(
        &mut self,
        v4: &str,
        v6: &str,
        chain: &str,
        table: &str,
        params: &[&str],
    ) {
        self.append_v4(chain, table, &versioned(params, v4));
        self.append_v6(chain, table, &versioned(params, v6));
    }

    pub fn rules_v4(&self) -> &[Rule] {
        &self.v4
    }

    pub fn rules_v6(&self) -> &[Rule] {
        &self.v6
    }

    /// The iptables-restore input for IPv4 (empty when there are no rules).
    pub fn v4_restore(&self) -> String {
        restore(&self.v4)
    }

    pub fn v6_restore(&self) -> String {
        restore(&self.v6)
    }

    /// `-C` commands checking that every IPv4 rule exists.
    pub fn check_v4(&self) -> Vec<Command> {
        commands(&rewrite(&self.v4, "-C", false))
    }

    pub fn check_v6(&self) -> Vec<Command> {
        commands(&rewrite(&self.v6, "-C", false))
    }

    /// The commands that undo the IPv4 rules: the jumps and built-in-chain rules deleted in
    /// reverse order, then every ISTIO chain flushed and deleted.
    pub fn cleanup_v4(&self) -> Vec<Command> {
        cleanup(&self.v4)
    }

    pub fn cleanup_v6(&self) -> Vec<Command> {
        cleanup(&self.v6)
    }
}

/// Drop TCP and UDP in INPUT, FORWARD and OUTPUT while rules are being replaced.
pub fn guardrails() -> Vec<Command> {
    commands(&guardrail_rules())
}

/// Removes the [`guardrails`].
pub fn cleanup_guardrails() -> Vec<Command> {
    commands(&rewrite(&guardrail_rules(), "-D", true))
}

fn guardrail_rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    for chain in ["INPUT", "FORWARD", "OUTPUT"] {
        for proto in ["tcp", "udp"] {
            rules.push(inserted(chain, "filter", 1, &["-p", proto, "-j", "DROP"]));
        }
    }
    rules
}

fn commands(rules: &[Rule]) -> Vec<Command> {
    rules
        .iter()
        .map(|r| {
            let mut cmd = vec!["-t".to_string(), r.table.clone()];
            cmd.extend(r.params.iter().cloned());
            cmd
        })
        .collect()
}

fn restore(rules: &[Rule]) -> String {
    let mut tables: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for t in ["filter", "nat", "mangle"] {
        tables.insert(t, Vec::new());
    }
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for r in rules {
        if seen.insert((r.chain.clone(), r.table.clone())) && !built_in(&r.chain) {
            tables
                .entry(&r.table)
                .or_default()
                .push(format!("-N {}", r.chain));
        }
    }
    // Chains only jumped to still need creating.
    for r in rules {
        let n = r.params.len();
        if n >= 2 && r.params[n - 2] == "-j" {
            let target = &r.params[n - 1];
            if seen.insert((target.clone(), r.table.clone())) && !built_in(target) {
                tables
                    .entry(&r.table)
                    .or_default()
                    .push(format!("-N {target}"));
            }
        }
    }
    for r in rules {
        tables.entry(&r.table).or_default().push(r.params.join(" "));
    }
    let mut out = String::new();
    for (table, lines) in tables {
        if lines.is_empty() {
            continue;
        }
        out.push_str(&format!("* {table}\n"));
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// `-A`/`-I chain pos` become `verb chain` (the position dropped). With `undo`, rules in ISTIO_
/// chains are dropped unless they jump to an ISTIO_ chain: those chains are flushed anyway.
fn rewrite(rules: &[Rule], verb: &str, undo: bool) -> Vec<Rule> {
    let mut out = Vec::new();
    for r in rules {
        let mut params = Vec::new();
        let mut skip = false;
        let mut insert_at: Option<usize> = None;
        for (i, p) in r.params.iter().enumerate() {
            if insert_at.is_some_and(|at| i == at + 2) {
                continue;
            }
            let next_istio = r.params.get(i + 1).is_some_and(|n| n.starts_with("ISTIO_"));
            match p.as_str() {
                "-A" | "--append" | "-I" | "--insert" => {
                    if p == "-I" || p == "--insert" {
                        insert_at = Some(i);
                    }
                    params.push(verb.to_string());
                    if next_istio {
                        skip = true;
                    }
                }
                "-j" | "--jump" => {
                    params.push(p.clone());
                    if next_istio {
                        skip = false;
                    }
                }
                _ => params.push(p.clone()),
            }
        }
        if undo && skip {
            continue;
        }
        out.push(Rule {
            chain: r.chain.clone(),
            table: r.table.clone(),
            params,
        });
    }
    out
}

fn cleanup(rules: &[Rule]) -> Vec<Command> {
    let reversed: Vec<Rule> = rules.iter().rev().cloned().collect();
    let mut out = commands(&rewrite(&reversed, "-D", true));
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for r in &reversed {
        if seen.insert((r.chain.clone(), r.table.clone())) && !built_in(&r.chain) {
            for verb in ["-F", "-X"] {
                out.push(vec![
                    "-t".into(),
                    r.table.clone(),
                    verb.into(),
                    r.chain.clone(),
                ]);
            }
        }
    }
    out
}

/// An iptables-save (or restore) text as table → chain → rules, keeping only ISTIO_ chain
/// declarations (as Istio's GetStateFromSave does). The four default tables are always present.
pub fn state_from_save(data: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut result: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for t in ["filter", "nat", "mangle", "raw"] {
        result.insert(t.into(), BTreeMap::new());
    }
    let mut table = String::new();
    for line in data.split('\n') {
        if line.trim().is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
            continue;
        }
        if line.starts_with(':') {
            if line.starts_with(":ISTIO") {
                let chain = line.split(' ').next().unwrap_or("")[1..].to_string();
                result
                    .entry(table.clone())
                    .or_default()
                    .entry(chain)
                    .or_default();
            }
            continue;
        }
        let words: Vec<&str> = line.split(' ').collect();
        let mut chain = "";
        for (i, w) in words.iter().enumerate() {
            if matches!(*w, "--append" | "-A" | "--insert" | "-I") && i + 1 < words.len() {
                chain = words[i + 1];
            }
        }
        if chain.is_empty() {
            continue;
        }
        result
            .entry(table.clone())
            .or_default()
            .entry(chain.to_string())
            .or_default()
            .push(line.to_string());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(cmds: &[Command]) -> Vec<String> {
        cmds.iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn restore_creates_chains_then_rules_by_table() {
        let mut b = RuleBuilder::new(false);
        b.append("ISTIO_DROP", "mangle", &["-j", "DROP"]);
        b.append("OUTPUT", "nat", &["-j", "ISTIO_OUTPUT"]);
        b.append_v6("ISTIO_OUTPUT", "nat", &["-j", "RETURN"]);
        assert_eq!(
            b.v4_restore(),
            "* mangle\n-N ISTIO_DROP\n-A ISTIO_DROP -j DROP\nCOMMIT\n\
             * nat\n-N ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n"
        );
        assert_eq!(b.v6_restore(), "");
    }

    #[test]
    fn cleanup_deletes_jumps_in_reverse_then_flushes_chains() {
        let mut b = RuleBuilder::new(false);
        b.insert("PREROUTING", "nat", 1, &["-i", "eth1", "-j", "RETURN"]);
        b.append(
            "ISTIO_REDIRECT",
            "nat",
            &["-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"],
        );
        b.append("OUTPUT", "nat", &["-j", "ISTIO_OUTPUT"]);
        b.append(
            "ISTIO_OUTPUT",
            "nat",
            &["-d", "10.0.0.0/8", "-j", "ISTIO_REDIRECT"],
        );
        assert_eq!(
            joined(&b.cleanup_v4()),
            [
                "-t nat -D ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
                "-t nat -D OUTPUT -j ISTIO_OUTPUT",
                "-t nat -D PREROUTING -i eth1 -j RETURN",
                "-t nat -F ISTIO_OUTPUT",
                "-t nat -X ISTIO_OUTPUT",
                "-t nat -F ISTIO_REDIRECT",
                "-t nat -X ISTIO_REDIRECT",
            ]
        );
    }

    #[test]
    fn checks_drop_the_insert_position() {
        let mut b = RuleBuilder::new(false);
        b.insert("ISTIO_INBOUND", "mangle", 2, &["-p", "tcp", "-j", "RETURN"]);
        assert_eq!(
            joined(&b.check_v4()),
            ["-t mangle -C ISTIO_INBOUND -p tcp -j RETURN"]
        );
    }

    #[test]
    fn guardrails_and_their_removal() {
        assert_eq!(
            joined(&guardrails())[0],
            "-t filter -I INPUT 1 -p tcp -j DROP"
        );
        assert_eq!(
            joined(&cleanup_guardrails())[5],
            "-t filter -D OUTPUT -p udp -j DROP"
        );
    }

    #[test]
    fn state_from_save_keeps_istio_chains_and_rules() {
        let save = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n\
                    :ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n";
        let s = state_from_save(save);
        assert_eq!(s["nat"]["ISTIO_OUTPUT"], Vec::<String>::new());
        assert_eq!(
            s["nat"]["OUTPUT"],
            vec!["-A OUTPUT -j ISTIO_OUTPUT".to_string()]
        );
        assert!(!s["nat"].contains_key("PREROUTING"));
        assert!(s["raw"].is_empty());
    }
}
