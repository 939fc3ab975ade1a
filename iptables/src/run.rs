//! Applying (or cleaning up) the rules, as istio-iptables' IptablesConfigurator.Run and
//! executeCommands do: detect the binaries per family, compare the current state with the
//! planned one, clean up (with guardrails) when reconciling, apply through
//! `iptables-restore --noflush`, and dump the final state.

use crate::builder::{self, Command, RuleBuilder};
use crate::capture;
use crate::config::Config;
use crate::deps::{Cmd, Dependencies, IptablesVersion};
use crate::log::Log;

/// Builds the rules for `cfg` and applies them (or, with `cleanup_only`, removes them)
/// through `deps`.
pub fn run(cfg: &Config, deps: &mut dyn Dependencies, log: &Log) -> Result<(), String> {
    let v4 = deps.detect(false)?;
    let v6 = match deps.detect(true) {
        Ok(v) => Some(v),
        Err(e) if !cfg.enable_ipv6 => {
            log.warn(&format!(
                "no usable ip6tables ({e}); IPv6 is not enabled, continuing without it"
            ));
            None
        }
        Err(e) => return Err(e),
    };
    let rules = capture::build(cfg)?;
    if cfg.redirect_dns && !capture::effective_redirect_dns(cfg) {
        log.warn("REDIRECT_DNS is set, but CAPTURE_ALL_DNS is false, and no DNS servers provided. DNS capture disabled.");
    }
    let result = execute(cfg, deps, log, &rules, &v4, v6.as_ref());
    if let Ok(state) = deps.run(Cmd::Save, &v4, None, &[]) {
        log.info(&format!("Final iptables state (IPv4):\n{state}"));
    }
    if cfg.enable_ipv6
        && let Some(v6) = &v6
        && let Ok(state) = deps.run(Cmd::Save, v6, None, &[])
    {
        log.info(&format!("Final iptables state (IPv6):\n{state}"));
    }
    result
}

fn execute(
    cfg: &Config,
    deps: &mut dyn Dependencies,
    log: &Log,
    rules: &RuleBuilder,
    v4: &IptablesVersion,
    v6: Option<&IptablesVersion>,
) -> Result<(), String> {
    let versions: Vec<&IptablesVersion> = std::iter::once(v4).chain(v6).collect();
    let (residue, delta) = verify_state(deps, log, rules, v4, v6);
    if residue && delta && !cfg.reconcile {
        log.info("reconcile is recommended but no-reconcile flag is set. Unexpected behavior may occur due to preexisting iptables rules");
    }
    let mut guardrails = false;
    let result = (|| {
        if (residue && delta && cfg.reconcile) || cfg.cleanup_only {
            if !cfg.cleanup_only {
                log.info("Setting up guardrails");
                for ver in &versions {
                    try_all(deps, ver, &builder::cleanup_guardrails());
                    all(deps, ver, &builder::guardrails())?;
                    guardrails = true;
                }
            }
            log.info("Performing cleanup of existing iptables");
            try_all(deps, v4, &rules.cleanup_v4());
            if let Some(v6) = v6 {
                try_all(deps, v6, &rules.cleanup_v6());
            }
        }
        if (delta || cfg.force_apply) && !cfg.cleanup_only {
            log.info("Applying iptables chains and rules");
            restore(deps, log, v4, &rules.v4_restore())?;
            if let Some(v6) = v6 {
                restore(deps, log, v6, &rules.v6_restore())?;
            }
        }
        Ok(())
    })();
    if guardrails {
        log.info("Removing guardrails");
        for ver in &versions {
            let _ = all(deps, ver, &builder::cleanup_guardrails());
        }
    }
    result
}

fn restore(
    deps: &mut dyn Dependencies,
    log: &Log,
    ver: &IptablesVersion,
    data: &str,
) -> Result<(), String> {
    log.info(&format!(
        "Running iptables restore with: {} and the following input:\n{}",
        ver.restore_binary,
        data.trim()
    ));
    deps.run(Cmd::Restore, ver, Some(data), &["--noflush".to_string()])
        .map(|_| ())
}

fn all(deps: &mut dyn Dependencies, ver: &IptablesVersion, cmds: &[Command]) -> Result<(), String> {
    for c in cmds {
        deps.run(Cmd::Iptables, ver, None, c)?;
    }
    Ok(())
}

fn try_all(deps: &mut dyn Dependencies, ver: &IptablesVersion, cmds: &[Command]) {
    for c in cmds {
        let _ = deps.run(Cmd::Iptables, ver, None, c);
    }
}

/// VerifyIptablesState: whether ISTIO residues exist and whether they differ from the plan
/// (missing or extra ISTIO_ chains, a different rule count in one, or a planned rule that
/// `-C` does not find). Rule order is not compared.
fn verify_state(
    deps: &mut dyn Dependencies,
    log: &Log,
    rules: &RuleBuilder,
    v4: &IptablesVersion,
    v6: Option<&IptablesVersion>,
) -> (bool, bool) {
    let mut residue = false;
    let mut delta = false;
    let mut clean_with_delta = false;
    let families = [
        (Some(v4), rules.v4_restore(), rules.check_v4()),
        (v6, rules.v6_restore(), rules.check_v6()),
    ];
    'families: for (ver, expected, checks) in families {
        let Some(ver) = ver else { continue };
        let Ok(output) = deps.run(Cmd::Save, ver, None, &[]) else {
            continue;
        };
        let current = builder::state_from_save(&output);
        residue = residue || current.values().any(|chains| !chains.is_empty());
        let expected = builder::state_from_save(&expected);
        let planned = expected.values().any(|chains| !chains.is_empty());
        if !residue {
            clean_with_delta |= planned;
            continue;
        }
        for (table, chains) in &expected {
            let Some(current_chains) = current.get(table) else {
                delta = true;
                break 'families;
            };
            for (chain, rules) in chains {
                match current_chains.get(chain) {
                    Some(c) if !(chain.starts_with("ISTIO_") && c.len() != rules.len()) => {}
                    _ => {
                        delta = true;
                        break 'families;
                    }
                }
            }
        }
        for (table, chains) in &current {
            let missing = chains.keys().any(|c| {
                c.starts_with("ISTIO_") && !expected.get(table).is_some_and(|e| e.contains_key(c))
            });
            if missing {
                delta = true;
                break 'families;
            }
        }
        if checks
            .iter()
            .any(|c| deps.run(Cmd::Iptables, ver, None, c).is_err())
        {
            delta = true;
        }
        if clean_with_delta {
            log.info("Found a clean state in IPv4 requiring new rules while IPv6 had residues. Reconciliation is recommended");
            return (planned, true);
        }
    }
    if !residue {
        log.info("Clean-state detected, new iptables are needed");
        return (false, true);
    }
    if delta {
        log.info("Found residues of old iptables rules/chains, reconciliation is recommended");
    } else {
        log.info(
            "Found compatible residues of old iptables rules/chains, reconciliation not needed",
        );
    }
    (residue, delta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deps::DryRun;

    /// Records like [`DryRun`] but answers `iptables-save` with `state` and fails `-C` checks
    /// when `checks_fail`.
    struct Scripted {
        record: DryRun,
        state: String,
        checks_fail: bool,
    }

    impl Dependencies for Scripted {
        fn run(
            &mut self,
            cmd: Cmd,
            ver: &IptablesVersion,
            stdin: Option<&str>,
            args: &[String],
        ) -> Result<String, String> {
            self.record.run(cmd, ver, stdin, args)?;
            match cmd {
                Cmd::Save if ver.binary == "iptables" => Ok(self.state.clone()),
                Cmd::Iptables if self.checks_fail && args.iter().any(|a| a == "-C") => {
                    Err("no such rule".into())
                }
                _ => Ok(String::new()),
            }
        }

        fn detect(&mut self, ipv6: bool) -> Result<IptablesVersion, String> {
            self.record.detect(ipv6)
        }
    }

    fn cfg(reconcile: bool) -> Config {
        Config {
            proxy_uid: "1337".into(),
            proxy_gid: "1337".into(),
            reconcile,
            ..Config::default()
        }
    }

    /// The planned rules as iptables-save would print them (same counts per chain).
    fn planned_state(cfg: &Config) -> String {
        capture::build(cfg)
            .unwrap()
            .v4_restore()
            .replace("-N ", ":")
    }

    fn run_with(cfg: &Config, state: String, checks_fail: bool) -> Vec<String> {
        let mut deps = Scripted {
            record: DryRun::default(),
            state,
            checks_fail,
        };
        run(cfg, &mut deps, &Log::silent()).unwrap();
        deps.record.executed
    }

    #[test]
    fn compatible_residue_is_left_alone() {
        let c = cfg(false);
        let executed = run_with(&c, planned_state(&c), false);
        assert!(
            executed
                .iter()
                .any(|l| l.starts_with("iptables -t nat -C OUTPUT -j ISTIO_OUTPUT"))
        );
        assert!(
            !executed.iter().any(|l| l == "* nat"),
            "nothing restored: {executed:?}"
        );
    }

    #[test]
    fn differing_residue_is_reconciled_behind_guardrails() {
        let c = cfg(true);
        let stale = format!("{}*nat\n:ISTIO_OLD - [0:0]\nCOMMIT\n", planned_state(&c));
        let executed = run_with(&c, stale, false);
        let pos = |line: &str| {
            executed
                .iter()
                .position(|l| l == line)
                .unwrap_or_else(|| panic!("{line}: {executed:?}"))
        };
        let guard = pos("iptables -t filter -I INPUT 1 -p tcp -j DROP");
        let cleanup = pos("iptables -t nat -X ISTIO_OUTPUT");
        let restore = pos("* nat");
        let unguard = executed
            .iter()
            .rposition(|l| l == "iptables -t filter -D INPUT -p tcp -j DROP")
            .unwrap();
        assert!(
            guard < cleanup && cleanup < restore && restore < unguard,
            "{executed:?}"
        );
    }

    #[test]
    fn differing_residue_without_reconcile_is_applied_over() {
        let c = cfg(false);
        let executed = run_with(&c, planned_state(&c), true);
        assert!(executed.iter().any(|l| l == "* nat"), "{executed:?}");
        assert!(
            !executed.iter().any(|l| l.contains("-j DROP")),
            "no guardrails: {executed:?}"
        );
        assert!(
            !executed.iter().any(|l| l.contains(" -X ")),
            "no cleanup: {executed:?}"
        );
    }

    #[test]
    fn force_apply_reapplies_compatible_rules() {
        let c = Config {
            force_apply: true,
            ..cfg(false)
        };
        let executed = run_with(&c, planned_state(&c), false);
        assert!(executed.iter().any(|l| l == "* nat"), "{executed:?}");
    }
}
