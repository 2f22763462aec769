//! CAA evaluation (RFC 8659): may the configured CA issue for a name, given the CAA set that
//! applies to it?

use crate::observed::{CaaFound, CaaRecord};

/// Why CAA forbids issuance, with the record that would allow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaaRefusal {
    pub message: String,
    pub remediation: String,
}

/// Whether a CA known by any of `ca_identities` (e.g. `letsencrypt.org`) may issue for the name
/// whose applicable CAA set is `found`; `wildcard` for a `*.` name (where `issuewild` wins).
pub fn evaluate(
    found: &CaaFound,
    ca_identities: &[String],
    wildcard: bool,
) -> Result<(), CaaRefusal> {
    let ca = ca_identities
        .first()
        .map_or("letsencrypt.org", String::as_str);
    let at = found.at.as_deref().unwrap_or("the domain");
    let tag = if wildcard { "issuewild" } else { "issue" };
    let fix = format!(
        "Add a CAA record at {at}: `{at}. CAA 0 {tag} \"{ca}\"`, or remove the CAA records that exclude it."
    );
    if let Some(why) = &found.failed {
        return Err(CaaRefusal {
            message: format!(
                "the CAA lookup failed ({why}); a CA refuses to issue when it cannot read CAA"
            ),
            remediation:
                "Make sure the domain's DNS servers answer CAA queries (an empty answer is fine)."
                    .into(),
        });
    }
    if found.records.is_empty() {
        return Ok(());
    }
    if let Some(unknown) = found.records.iter().find(|r| {
        r.critical
            && !["issue", "issuewild", "iodef", "issuemail", "issuevmc"]
                .contains(&r.tag.to_ascii_lowercase().as_str())
    }) {
        return Err(CaaRefusal {
            message: format!(
                "a critical CAA record with the unknown tag {:?} at {at} forbids all issuance",
                unknown.tag
            ),
            remediation: format!(
                "Remove the critical flag or the record `{} {}`.",
                unknown.tag, unknown.value
            ),
        });
    }
    let of_tag = |tag: &str| -> Vec<&CaaRecord> {
        found
            .records
            .iter()
            .filter(|r| r.tag.eq_ignore_ascii_case(tag))
            .collect()
    };
    let mut relevant = if wildcard {
        of_tag("issuewild")
    } else {
        Vec::new()
    };
    if relevant.is_empty() {
        relevant = of_tag("issue");
    }
    if relevant.is_empty() {
        // Only iodef (or issuewild for a non-wildcard name): no restriction on this name.
        return Ok(());
    }
    let allowed = relevant.iter().any(|r| {
        let domain = r
            .value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        !domain.is_empty()
            && ca_identities
                .iter()
                .any(|ca| ca.eq_ignore_ascii_case(&domain))
    });
    if allowed {
        Ok(())
    } else {
        let listed: Vec<&str> = relevant.iter().map(|r| r.value.as_str()).collect();
        Err(CaaRefusal {
            message: format!(
                "the CAA records at {at} allow only {listed:?} to issue ({tag}), not {ca}"
            ),
            remediation: fix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(at: &str, records: &[(&str, &str)]) -> CaaFound {
        CaaFound {
            at: Some(at.into()),
            records: records
                .iter()
                .map(|(tag, value)| CaaRecord {
                    critical: false,
                    tag: (*tag).into(),
                    value: (*value).into(),
                })
                .collect(),
            failed: None,
        }
    }

    fn ca() -> Vec<String> {
        vec!["letsencrypt.org".into()]
    }

    #[test]
    fn no_caa_permits() {
        let none = CaaFound {
            at: None,
            records: vec![],
            failed: None,
        };
        assert!(evaluate(&none, &ca(), false).is_ok());
        assert!(evaluate(&none, &ca(), true).is_ok());
    }

    #[test]
    fn issue_lists_decide() {
        assert!(
            evaluate(
                &set("example.com", &[("issue", "letsencrypt.org")]),
                &ca(),
                false
            )
            .is_ok()
        );
        assert!(
            evaluate(
                &set(
                    "example.com",
                    &[("issue", "LetsEncrypt.org; validationmethods=dns-01")]
                ),
                &ca(),
                false
            )
            .is_ok()
        );
        let forbidden = evaluate(
            &set("example.com", &[("issue", "digicert.com")]),
            &ca(),
            false,
        )
        .expect_err("forbidden");
        assert!(
            forbidden
                .remediation
                .contains("CAA 0 issue \"letsencrypt.org\""),
            "{forbidden:?}"
        );
        assert!(evaluate(&set("example.com", &[("issue", ";")]), &ca(), false).is_err());
        assert!(
            evaluate(
                &set("example.com", &[("iodef", "mailto:a@example.com")]),
                &ca(),
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn issuewild_applies_to_wildcards_only() {
        let s = set(
            "example.com",
            &[("issue", "digicert.com"), ("issuewild", "letsencrypt.org")],
        );
        assert!(
            evaluate(&s, &ca(), true).is_ok(),
            "issuewild allows the wildcard"
        );
        assert!(
            evaluate(&s, &ca(), false).is_err(),
            "issue forbids the plain name"
        );
        let s = set(
            "example.com",
            &[("issue", "letsencrypt.org"), ("issuewild", ";")],
        );
        assert!(evaluate(&s, &ca(), false).is_ok());
        let refusal = evaluate(&s, &ca(), true).expect_err("issuewild forbids");
        assert!(refusal.remediation.contains("issuewild"), "{refusal:?}");
        // Without issuewild, a wildcard falls back to issue.
        assert!(
            evaluate(
                &set("example.com", &[("issue", "letsencrypt.org")]),
                &ca(),
                true
            )
            .is_ok()
        );
    }

    #[test]
    fn critical_unknown_tags_and_failures_forbid() {
        let mut s = set(
            "example.com",
            &[("issue", "letsencrypt.org"), ("futuretag", "x")],
        );
        s.records[1].critical = true;
        assert!(evaluate(&s, &ca(), false).is_err());
        s.records[1].critical = false;
        assert!(evaluate(&s, &ca(), false).is_ok());
        let failed = CaaFound {
            at: None,
            records: vec![],
            failed: Some("SERVFAIL".into()),
        };
        assert!(evaluate(&failed, &ca(), false).is_err());
    }
}
