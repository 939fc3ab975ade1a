//! `envoy.filters.network.rbac`: on the first bytes read from downstream (on every read with
//! `CONTINUOUS`), the shadow engine is evaluated and counted, then the enforced engine decides;
//! a denied connection is closed before any byte reaches the upstream (after `delay_deny`, if
//! set, with reads stopped), its `%CONNECTION_TERMINATION_DETAILS%`
//! `rbac_access_denied_matched_policy[<policy>|none]`, its local close reason `rbac_deny_close`
//! (`%DOWNSTREAM_LOCAL_CLOSE_REASON%`). Stats: `<stat_prefix>.rbac.allowed|denied`,
//! `<stat_prefix>.rbac.[<shadow_rules_stat_prefix>.]shadow_allowed|shadow_denied`; dynamic
//! metadata in `envoy.filters.network.rbac`: `<shadow prefix>shadow_effective_policy_id`,
//! `<shadow prefix>shadow_engine_result`.

use std::sync::Arc;

use super::{ConnCx, NetFlow, NetworkFilter, NetworkFilterFactory};
use crate::filters::common::rbac::{
    self as engine, COMMON_NAMESPACE, Decision, ENGINE_RESULT_ALLOWED, ENGINE_RESULT_DENIED, Mode,
    RbacStats, SHADOW_EFFECTIVE_POLICY_ID, SHADOW_ENGINE_RESULT,
};
use crate::model::rbac::NetworkRbac;
use crate::stream_info::FilterState;
use crate::telemetry::stats::Store;

/// The dynamic metadata namespace.
pub const NAMESPACE: &str = "envoy.filters.network.rbac";

/// The local close reason of a denied connection (`%DOWNSTREAM_LOCAL_CLOSE_REASON%`).
pub const DENY_CLOSE: &str = "rbac_deny_close";

/// One network RBAC filter of a filter chain.
#[derive(Debug)]
pub struct NetworkRbacFactory {
    config: Arc<NetworkRbac>,
    stats: Arc<RbacStats>,
}

impl NetworkRbacFactory {
    pub fn new(config: Arc<NetworkRbac>, store: &Arc<Store>) -> Self {
        let stats = RbacStats::new(
            store,
            &config.stat_prefix,
            "",
            &config.shadow_rules_stat_prefix,
        );
        Self {
            config,
            stats: Arc::new(stats),
        }
    }
}

impl NetworkFilterFactory for NetworkRbacFactory {
    fn create(&self, _cx: &ConnCx<'_>) -> Option<Box<dyn NetworkFilter>> {
        Some(Box::new(NetworkRbacFilter {
            config: self.config.clone(),
            stats: self.stats.clone(),
            shadow_done: false,
            enforced: None,
        }))
    }
}

/// The filter on one connection.
pub struct NetworkRbacFilter {
    config: Arc<NetworkRbac>,
    stats: Arc<RbacStats>,
    shadow_done: bool,
    /// The enforced decision, once taken (`ONE_TIME_ON_FIRST_BYTE`).
    enforced: Option<bool>,
}

impl NetworkRbacFilter {
    fn check(&mut self, cx: &mut ConnCx<'_>) -> NetFlow {
        let continuous = self.config.continuous;
        let empty = FilterState::default();
        let run_shadow = continuous || !self.shadow_done;
        let run_enforced = continuous || self.enforced.is_none();
        let (shadow, enforced) = {
            let input = engine::Input {
                connection: cx.connection,
                downstream_remote: cx.connection.remote,
                headers: None,
                metadata: cx.metadata,
                filter_state: &empty,
                protocol: None,
            };
            (
                self.config
                    .shadow
                    .as_ref()
                    .filter(|_| run_shadow)
                    .map(|e| engine::evaluate(e, &input, Mode::Shadow)),
                self.config
                    .engine
                    .as_ref()
                    .filter(|_| run_enforced)
                    .map(|e| engine::evaluate(e, &input, Mode::Enforced)),
            )
        };
        self.shadow_done = true;
        if let Some(d) = &shadow {
            self.stats.count(Mode::Shadow, d, false);
            let prefix = &self.config.shadow_rules_stat_prefix;
            if let Some(p) = &d.policy {
                cx.metadata.set(
                    NAMESPACE,
                    format!("{prefix}{SHADOW_EFFECTIVE_POLICY_ID}"),
                    p.to_string().into(),
                );
            }
            let result = if d.allowed {
                ENGINE_RESULT_ALLOWED
            } else {
                ENGINE_RESULT_DENIED
            };
            cx.metadata.set(
                NAMESPACE,
                format!("{prefix}{SHADOW_ENGINE_RESULT}"),
                result.into(),
            );
        }
        let denied_policy = match enforced {
            Some(d) => {
                let Decision {
                    allowed,
                    policy,
                    log_hint,
                } = &d;
                if let Some(hint) = log_hint {
                    cx.metadata
                        .set(COMMON_NAMESPACE, engine::ACCESS_LOG_HINT, (*hint).into());
                }
                self.stats.count(Mode::Enforced, &d, false);
                self.enforced = Some(*allowed);
                (!allowed).then(|| policy.clone())
            }
            // Decided before (or no engine: allowed by default).
            None if self.enforced == Some(false) => Some(None),
            None => None,
        };
        match denied_policy {
            None => NetFlow::Continue,
            Some(policy) => {
                // Envoy's: the policy in the termination details, then the close.
                *cx.termination_details = Some(engine::response_detail(policy.as_deref()));
                match self.config.delay_deny {
                    None => NetFlow::Close(DENY_CLOSE.into()),
                    Some(d) => NetFlow::Pause(Box::pin(async move {
                        tokio::time::sleep(d).await;
                        NetFlow::Close(DENY_CLOSE.into())
                    })),
                }
            }
        }
    }
}

impl NetworkFilter for NetworkRbacFilter {
    fn on_data(&mut self, _data: &[u8], _end_stream: bool, cx: &mut ConnCx<'_>) -> NetFlow {
        self.check(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::common::rbac::testing::{connection, network_rbac, store};
    use crate::stream_info::DynamicMetadata;

    const RULES: &str = r#"
stat_prefix: tcp.
shadow_rules_stat_prefix: sh_
rules:
  policies:
    "ns[autolytiq]-policy[tcp]-rule[0]":
      permissions: [{and_rules: {rules: [{or_rules: {rules: [{destination_port: 5432}]}}]}}]
      principals: [{and_ids: {ids: [{or_ids: {ids: [{authenticated: {principal_name: {safe_regex: {regex: ".*/ns/autolytiq/.*"}}}}]}}]}}]
shadow_rules:
  action: DENY
  policies:
    everyone: {permissions: [{any: true}], principals: [{any: true}]}
"#;

    fn first_read(
        f: &NetworkRbacFactory,
        spiffe: Option<&str>,
        md: &mut DynamicMetadata,
    ) -> NetFlow {
        first_read_details(f, spiffe, md).0
    }

    /// The first read's outcome and the termination details it set.
    fn first_read_details(
        f: &NetworkRbacFactory,
        spiffe: Option<&str>,
        md: &mut DynamicMetadata,
    ) -> (NetFlow, Option<std::borrow::Cow<'static, str>>) {
        let conn = connection(5432, spiffe);
        let mut flags = crate::stream_info::ResponseFlags::empty();
        let mut details = None;
        let mut cx = ConnCx {
            connection: &conn,
            metadata: md,
            response_flags: &mut flags,
            termination_details: &mut details,
        };
        let mut filter = f.create(&cx).expect("a filter");
        filter.on_new_connection(&mut cx);
        let flow = filter.on_data(b"hello", false, &mut cx);
        (flow, details)
    }

    #[test]
    fn denied_connection_closes_with_details_shadow_counted() {
        let st = store();
        let f = NetworkRbacFactory::new(network_rbac(RULES), &st);
        let mut md = DynamicMetadata::default();
        let (flow, details) =
            first_read_details(&f, Some("spiffe://cluster.local/ns/other/sa/x"), &mut md);
        match flow {
            NetFlow::Close(d) => assert_eq!(d, "rbac_deny_close"),
            _ => panic!("closed"),
        }
        assert_eq!(
            details.as_deref(),
            Some("rbac_access_denied_matched_policy[none]")
        );
        let ns = md.namespace(NAMESPACE).unwrap();
        assert_eq!(ns.get("sh_shadow_engine_result").unwrap(), "denied");
        assert_eq!(ns.get("sh_shadow_effective_policy_id").unwrap(), "everyone");

        let mut md = DynamicMetadata::default();
        let flow = first_read(
            &f,
            Some("spiffe://cluster.local/ns/autolytiq/sa/deal"),
            &mut md,
        );
        assert!(matches!(flow, NetFlow::Continue));
        let flow = first_read(&f, None, &mut md);
        assert!(matches!(flow, NetFlow::Close(_)));

        let c = |n: &str| st.counter(n).value();
        assert_eq!(c("tcp.rbac.allowed"), 1);
        assert_eq!(c("tcp.rbac.denied"), 2);
        assert_eq!(c("tcp.rbac.sh_.shadow_denied"), 3);
        assert_eq!(c("tcp.rbac.sh_.shadow_allowed"), 0);
    }

    #[test]
    fn one_time_evaluation_unless_continuous() {
        let st = store();
        let f = NetworkRbacFactory::new(network_rbac(RULES), &st);
        let conn = connection(5432, Some("spiffe://cluster.local/ns/autolytiq/sa/deal"));
        let mut md = DynamicMetadata::default();
        let mut flags = crate::stream_info::ResponseFlags::empty();
        let mut cx = ConnCx {
            connection: &conn,
            metadata: &mut md,
            response_flags: &mut flags,
            termination_details: &mut None,
        };
        let mut filter = f.create(&cx).unwrap();
        for _ in 0..3 {
            assert!(matches!(
                filter.on_data(b"x", false, &mut cx),
                NetFlow::Continue
            ));
        }
        assert_eq!(st.counter("tcp.rbac.allowed").value(), 1);

        let cont = NetworkRbacFactory::new(
            network_rbac(&format!("{RULES}\nenforcement_type: CONTINUOUS\n").replace("tcp.", "c")),
            &st,
        );
        let mut filter = cont.create(&cx).unwrap();
        for _ in 0..3 {
            assert!(matches!(
                filter.on_data(b"x", false, &mut cx),
                NetFlow::Continue
            ));
        }
        assert_eq!(st.counter("c.rbac.allowed").value(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_deny_holds_then_closes() {
        let st = store();
        let f = NetworkRbacFactory::new(network_rbac(&format!("{RULES}\ndelay_deny: 2s\n")), &st);
        let mut md = DynamicMetadata::default();
        let NetFlow::Pause(fut) = first_read(&f, None, &mut md) else {
            panic!("paused");
        };
        let start = tokio::time::Instant::now();
        match fut.await {
            NetFlow::Close(d) => assert_eq!(d, "rbac_deny_close"),
            _ => panic!("closed"),
        }
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(2));
    }
}
