//! Where a plugin with `net:egress` may open connections (pure).
//!
//! `spec.network.egress` is written by a tenant, and NetworkPolicies are additive: a rule the
//! operator writes for a plugin opens that network whatever else the platform denies. So:
//! - a network that lies within a range plugins may never reach (link-local, which holds cloud
//!   metadata endpoints; loopback; the cluster's own Pod and Service ranges from
//!   `--cluster-cidr`) is refused, naming the rule and the range;
//! - a broader network (`0.0.0.0/0`) is allowed, and the NetworkPolicy excepts those ranges;
//! - when a governing policy lists `egressCidrs` for the plugin's trust level, each network must
//!   lie within one of them (every such policy, as for every other cap).

use airlock_crds::plugin::EgressRule;
use ipnet::IpNet;

/// Ranges no plugin may reach, whatever a policy says: link-local (metadata endpoints) and
/// loopback, in both families.
pub const ALWAYS_EXCLUDED: [&str; 4] = ["169.254.0.0/16", "fe80::/10", "127.0.0.0/8", "::1/128"];

/// [`ALWAYS_EXCLUDED`] and the cluster's own ranges.
pub fn never(cluster_cidrs: &[IpNet]) -> Vec<IpNet> {
    ALWAYS_EXCLUDED
        .iter()
        .filter_map(|c| c.parse().ok())
        .chain(cluster_cidrs.iter().copied())
        .collect()
}

/// What a trust level allows: per governing policy that sets `egressCidrs`, its name and ranges.
pub type Within = [(String, Vec<IpNet>)];

/// Checks the egress rules of a spec; the error is the status message (names the rule, the range
/// and what to do).
pub fn check(rules: &[EgressRule], within: &Within, never: &[IpNet]) -> Result<(), String> {
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("spec.network.egress[{i}].cidr {}", rule.cidr);
        let net: IpNet = rule
            .cidr
            .parse()
            .map_err(|_| format!("{field} is not a CIDR; write one such as 203.0.113.0/24"))?;
        if let Some(range) = never.iter().find(|n| n.contains(&net)) {
            return Err(format!(
                "{field} lies within {range}, which plugins may never reach (link-local, loopback or the cluster's own ranges); remove the rule"
            ));
        }
        for (policy, allowed) in within {
            if !allowed.iter().any(|a| a.contains(&net)) {
                let listed: Vec<String> = allowed.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "{field} is outside the networks PluginTrustPolicy {policy} allows at this trust level ({}); narrow the rule or have an admin add the network to egressCidrs",
                    if listed.is_empty() {
                        "none".to_string()
                    } else {
                        listed.join(", ")
                    }
                ));
            }
        }
    }
    Ok(())
}

/// The parts of `cidr` its NetworkPolicy rule must except: each never-reachable range of the same
/// family that lies inside it.
pub fn except(cidr: &str, never: &[IpNet]) -> Vec<String> {
    let Ok(net) = cidr.parse::<IpNet>() else {
        return Vec::new();
    };
    never
        .iter()
        .filter(|n| *n != &net && net.contains(*n))
        .map(ToString::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(cidrs: &[&str]) -> Vec<EgressRule> {
        cidrs
            .iter()
            .map(|c| EgressRule {
                cidr: c.to_string(),
                ports: vec![],
            })
            .collect()
    }

    fn cluster() -> Vec<IpNet> {
        vec![
            "10.96.0.0/12".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
        ]
    }

    #[test]
    fn metadata_loopback_and_cluster_ranges_are_refused_naming_the_rule() {
        let never = never(&cluster());
        for (cidr, range) in [
            ("169.254.169.254/32", "169.254.0.0/16"),
            ("127.0.0.1/32", "127.0.0.0/8"),
            ("10.96.0.1/32", "10.96.0.0/12"),
            ("10.244.3.0/24", "10.244.0.0/16"),
            ("fe80::1/128", "fe80::/10"),
        ] {
            let err = check(&rules(&["203.0.113.0/24", cidr]), &[], &never).unwrap_err();
            assert!(
                err.starts_with(&format!(
                    "spec.network.egress[1].cidr {cidr} lies within {range}"
                )),
                "{err}"
            );
        }
        assert!(
            check(&rules(&["203.0.113.0/24", "10.0.0.0/8"]), &[], &never).is_ok(),
            "a broader range is allowed (with excepts)"
        );
    }

    #[test]
    fn a_broad_rule_excepts_every_never_reachable_range_inside_it() {
        let never = never(&cluster());
        assert_eq!(
            except("0.0.0.0/0", &never),
            [
                "169.254.0.0/16",
                "127.0.0.0/8",
                "10.96.0.0/12",
                "10.244.0.0/16"
            ]
        );
        assert_eq!(
            except("10.0.0.0/8", &never),
            ["10.96.0.0/12", "10.244.0.0/16"]
        );
        assert_eq!(except("::/0", &never), ["fe80::/10", "::1/128"]);
        assert!(except("203.0.113.0/24", &never).is_empty());
    }

    #[test]
    fn a_trust_level_with_egress_cidrs_caps_every_rule() {
        let within = [
            (
                "platform".to_string(),
                vec![
                    "203.0.113.0/24".parse().unwrap(),
                    "198.51.100.0/24".parse().unwrap(),
                ],
            ),
            (
                "team-a".to_string(),
                vec!["203.0.113.0/25".parse().unwrap()],
            ),
        ];
        let never = never(&[]);
        assert!(check(&rules(&["203.0.113.16/28"]), &within, &never).is_ok());
        let err = check(&rules(&["203.0.113.200/32"]), &within, &never).unwrap_err();
        assert!(err.contains("outside the networks PluginTrustPolicy team-a allows at this trust level (203.0.113.0/25)"), "{err}");
        let err = check(&rules(&["0.0.0.0/0"]), &within, &never).unwrap_err();
        assert!(err.contains("PluginTrustPolicy platform"), "{err}");
        let nothing = [("strict".to_string(), vec![])];
        let err = check(&rules(&["203.0.113.1/32"]), &nothing, &never).unwrap_err();
        assert!(err.contains("(none)"), "{err}");
    }
}
