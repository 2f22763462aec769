//! Aligned tables and the DNS record instructions.

use std::fmt::Write;

use certplane_api_types::CertificateDetail;

/// An aligned table: a header row, then one line per row, columns two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                let pad = w - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The records a customer sets for this hostname, as numbered options.
pub fn dns_records(detail: &CertificateDetail) -> String {
    if detail.is_wildcard {
        return wildcard_records(detail);
    }
    let req = &detail.dns_requirements;
    let host = &detail.hostname;
    let mut out = format!("DNS records for {host}:\n\n");
    let _ = writeln!(
        out,
        "  1. Point the name at the app (recommended): A and AAAA"
    );
    let mut traffic: Vec<Vec<String>> = Vec::new();
    traffic.extend(req.a.iter().map(|a| row("A", host, a.to_string())));
    traffic.extend(req.aaaa.iter().map(|a| row("AAAA", host, a.to_string())));
    records(&mut out, &traffic);
    let _ = writeln!(
        out,
        "     (the AAAA record also proves that the name is yours)"
    );
    let mut n = 2;
    if let Some(cname) = &req.cname {
        let _ = writeln!(
            out,
            "\n  {n}. Or, instead of A/AAAA: a CNAME (it proves ownership too)"
        );
        records(&mut out, &[row("CNAME", host, cname.clone())]);
        n += 1;
    }
    let _ = writeln!(
        out,
        "\n  {n}. Ownership proof when the AAAA record cannot point at the app (a CDN or proxy in front): TXT"
    );
    ownership_txt(&mut out, detail);
    let _ = writeln!(
        out,
        "\n  {}. Optional, for DNS-01 validation (when HTTP and TLS cannot reach the platform): delegate the ACME challenge",
        n + 1
    );
    challenge(&mut out, detail);
    out
}

/// A wildcard is proven only by its base name's TXT record (or the challenge delegation), and
/// its certificate needs DNS-01: those records come first and are required.
fn wildcard_records(detail: &CertificateDetail) -> String {
    let req = &detail.dns_requirements;
    let host = &detail.hostname;
    let mut out = format!("DNS records for {host}:\n\n");
    let _ = writeln!(
        out,
        "  1. Required: prove ownership of the wildcard with a TXT record on its base name"
    );
    ownership_txt(&mut out, detail);
    let _ = writeln!(
        out,
        "\n  2. Required: delegate the ACME challenge (wildcard certificates are validated by DNS-01 only)"
    );
    challenge(&mut out, detail);
    let _ = writeln!(out, "\n  3. Point the names at the app: A and AAAA");
    let mut traffic: Vec<Vec<String>> = Vec::new();
    traffic.extend(req.a.iter().map(|a| row("A", host, a.to_string())));
    traffic.extend(req.aaaa.iter().map(|a| row("AAAA", host, a.to_string())));
    records(&mut out, &traffic);
    if let Some(cname) = &req.cname {
        let _ = writeln!(out, "     or a CNAME instead:");
        records(&mut out, &[row("CNAME", host, cname.clone())]);
    }
    out
}

fn row(t: &str, name: &str, value: String) -> Vec<String> {
    vec![t.to_owned(), name.to_owned(), value]
}

fn ownership_txt(out: &mut String, detail: &CertificateDetail) {
    let own = &detail.dns_requirements.ownership;
    records(
        out,
        &[row("TXT", &own.name, format!("\"{}\"", own.app_value))],
    );
    let _ = writeln!(
        out,
        "     (\"{}\" works too, for every app of your org; several values may share the record, separated by ';')",
        own.org_value
    );
}

fn challenge(out: &mut String, detail: &CertificateDetail) {
    let c = &detail.dns_requirements.acme_challenge;
    records(out, &[row("CNAME", &c.name, c.target.clone())]);
}

fn records(out: &mut String, rows: &[Vec<String>]) {
    for line in table(&["TYPE", "NAME", "VALUE"], rows).lines() {
        let _ = writeln!(out, "     {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["HOSTNAME", "STATUS"],
            &[
                vec!["a.example.com".into(), "active".into()],
                vec!["www.longer-example.com".into(), "pending_ownership".into()],
            ],
        );
        assert_eq!(
            t,
            "HOSTNAME                STATUS\n\
             a.example.com           active\n\
             www.longer-example.com  pending_ownership\n"
        );
    }
}
