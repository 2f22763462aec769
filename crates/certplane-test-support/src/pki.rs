//! A throwaway PKI for tests of custom-certificate import, built at test time with the
//! `openssl` command-line tool (OpenSSL 3.0) in a temporary directory.
//!
//! [`Pki`] is a root CA and an intermediate CA (both ECDSA P-256) that mints leaf certificates.
//! [`bundles`] builds one [`Bundle`] (fullchain PEM, private key PEM, hostname) per case the
//! import validator has to handle, with the outcome it must reach. All names are under the
//! private `import.test` domain.
//!
//! Leaves are issued with `openssl ca` rather than `openssl x509 -req`: OpenSSL 3.0 has no
//! `-not_before`/`-not_after` for `x509`, while `ca -startdate/-enddate` backdates and
//! postdates freely (expired and not-yet-valid leaves, and a `not_before` of yesterday).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One generated import case.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// Short unique case name, e.g. `"rsa2048_pkcs1"`.
    pub name: &'static str,
    /// The hostname the import is for, e.g. `"www.import.test"` or `"*.import.test"`.
    pub hostname: String,
    /// PEM text passed as `fullchain`.
    pub fullchain: String,
    /// PEM text passed as `private_key`.
    pub private_key: String,
    pub expected: Expected,
}

/// What the validator must make of a [`Bundle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Accepted; the listed warning codes (exact set, order irrelevant) are flagged.
    Accepted {
        warnings: Vec<&'static str>,
        /// `"rsa"` or `"ecdsa"`.
        key_type: &'static str,
    },
    /// Refused with exactly this error code.
    Refused(&'static str),
}

/// Every case [`bundles`] generates, in the order it returns them.
pub const CASE_NAMES: [&str; 40] = [
    "ecdsa_p256_pkcs8",
    "ecdsa_p256_sec1",
    "ecdsa_p384_pkcs8",
    "rsa2048_pkcs1",
    "rsa3072_pkcs8",
    "rsa4096_pkcs8",
    "crlf_line_endings",
    "explanatory_text",
    "root_included",
    "reordered",
    "leaf_only_missing_intermediate",
    "wildcard_covers_subdomain",
    "wildcard_hostname_wildcard_san",
    "combined_file_key_first",
    "combined_file_chain_first",
    "self_signed_leaf",
    "no_certificate",
    "no_key",
    "damaged_pem",
    "not_a_certificate",
    "two_keys",
    "encrypted_pkcs8",
    "encrypted_legacy",
    "key_mismatch",
    "hostname_not_covered",
    "wildcard_does_not_cover_apex",
    "wildcard_does_not_cover_two_levels",
    "wildcard_hostname_needs_wildcard_san",
    "no_san",
    "expired",
    "not_yet_valid",
    "rsa1024",
    "ed25519",
    "secp521r1",
    "sha1_signature",
    "leaf_is_ca",
    "chain_broken",
    "wrong_eku",
    "too_large",
    "key_invalid",
];

const DAY: i64 = 86_400;
const HOST: &str = "www.import.test";
const WILDCARD: &str = "*.import.test";
const UNTRUSTED: &str = "CHAIN_UNTRUSTED";

/// A test PKI: root CA -> intermediate CA -> leaf certificates, all ECDSA P-256 and SHA-256.
#[derive(Debug)]
pub struct Pki {
    ca: CaDir,
    root_cert: PathBuf,
    intermediate_cert: PathBuf,
    intermediate_key: PathBuf,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// A fresh root and intermediate, valid from a year ago for ten years.
    pub fn new() -> Pki {
        Self::named("certplane test")
    }

    fn named(org: &str) -> Pki {
        let ca = CaDir::new();
        let now = now_unix();
        let ca_spec = |subject: String, self_signed: bool| Spec {
            subject,
            sans: Vec::new(),
            ca: true,
            key_usage: "keyCertSign, cRLSign",
            eku: None,
            not_before: now - 365 * DAY,
            not_after: now + 3650 * DAY,
            md: "sha256",
            self_signed,
        };
        let root_key = ca.genkey(KeyAlg::P256);
        let root_cert = ca.issue(
            &root_key,
            &ca_spec(format!("/O={org}/CN={org} root"), true),
            None,
        );
        let intermediate_key = ca.genkey(KeyAlg::P256);
        let intermediate_cert = ca.issue(
            &intermediate_key,
            &ca_spec(format!("/O={org}/CN={org} intermediate"), false),
            Some((&root_cert, &root_key)),
        );
        Pki {
            ca,
            root_cert,
            intermediate_cert,
            intermediate_key,
        }
    }

    pub fn root_pem(&self) -> String {
        read(&self.root_cert)
    }

    pub fn intermediate_pem(&self) -> String {
        read(&self.intermediate_cert)
    }

    /// An ECDSA P-256 leaf for `sans` (DNS names), valid from now-1day to now+`days`, signed by
    /// the intermediate, SHA-256. Returns (leaf_pem, key_pem PKCS#8).
    pub fn leaf(&self, sans: &[&str], days: i64) -> (String, String) {
        let key = self.ca.genkey(KeyAlg::P256);
        let mut spec = Spec::server(sans, false);
        spec.not_after = now_unix() + days * DAY;
        let cert = self.issue(&key, &spec);
        (read(&cert), read(&key))
    }

    /// A leaf for `sans` with an RSA key of `bits` (or ECDSA P-256 when `None`), valid from
    /// `not_before` to `not_after` (unix seconds, either may be in the past), signed by the
    /// intermediate. Returns (leaf_pem, key_pem).
    pub fn leaf_with(
        &self,
        sans: &[&str],
        rsa_bits: Option<u32>,
        not_before: i64,
        not_after: i64,
    ) -> (String, String) {
        let alg = rsa_bits.map_or(KeyAlg::P256, KeyAlg::Rsa);
        let mut spec = Spec::server(sans, rsa_bits.is_some());
        spec.not_before = not_before;
        spec.not_after = not_after;
        self.keyed_leaf(alg, &spec)
    }

    /// Signs a leaf for `key` with the intermediate.
    fn issue(&self, key: &Path, spec: &Spec) -> PathBuf {
        let issuer = if spec.self_signed {
            None
        } else {
            Some((
                self.intermediate_cert.as_path(),
                self.intermediate_key.as_path(),
            ))
        };
        self.ca.issue(key, spec, issuer)
    }

    /// A new key and a leaf for it: (cert PEM, key PEM as generated, PKCS#8).
    fn keyed_leaf(&self, alg: KeyAlg, spec: &Spec) -> (String, String) {
        let key = self.ca.genkey(alg);
        (read(&self.issue(&key, spec)), read(&key))
    }
}

/// A leaf's properties.
#[derive(Clone, Debug)]
struct Spec {
    /// `openssl req -subj` form: `/O=.../CN=...`.
    subject: String,
    /// DNS subjectAltNames; none at all leaves the extension out.
    sans: Vec<String>,
    ca: bool,
    key_usage: &'static str,
    eku: Option<&'static str>,
    not_before: i64,
    not_after: i64,
    md: &'static str,
    self_signed: bool,
}

impl Spec {
    /// A proper TLS server leaf for `sans`, CN the first one, from now-1day to now+90days.
    fn server(sans: &[&str], rsa: bool) -> Spec {
        let now = now_unix();
        Spec {
            subject: format!(
                "/CN={}",
                sans.first().copied().unwrap_or("certplane test leaf")
            ),
            sans: sans.iter().map(|s| (*s).to_owned()).collect(),
            ca: false,
            key_usage: if rsa {
                "digitalSignature, keyEncipherment"
            } else {
                "digitalSignature"
            },
            eku: Some("serverAuth"),
            not_before: now - DAY,
            not_after: now + 90 * DAY,
            md: "sha256",
            self_signed: false,
        }
    }

    fn extensions(&self) -> String {
        let mut ext = String::from("[ext]\n");
        let ca = if self.ca { "TRUE" } else { "FALSE" };
        let _ = writeln!(ext, "basicConstraints = critical, CA:{ca}");
        let _ = writeln!(ext, "keyUsage = critical, {}", self.key_usage);
        if let Some(eku) = self.eku {
            let _ = writeln!(ext, "extendedKeyUsage = {eku}");
        }
        if !self.sans.is_empty() {
            let sans: Vec<String> = self.sans.iter().map(|s| format!("DNS:{s}")).collect();
            let _ = writeln!(ext, "subjectAltName = {}", sans.join(", "));
        }
        ext.push_str("subjectKeyIdentifier = hash\n");
        if !self.self_signed {
            ext.push_str("authorityKeyIdentifier = keyid\n");
        }
        ext
    }
}

#[derive(Clone, Copy, Debug)]
enum KeyAlg {
    P256,
    P384,
    P521,
    Rsa(u32),
    Ed25519,
}

/// The temporary directory an `openssl ca` database lives in.
#[derive(Debug)]
struct CaDir {
    dir: tempfile::TempDir,
    config: PathBuf,
    counter: AtomicU64,
    /// `openssl ca` rewrites index.txt: one signing at a time.
    lock: Mutex<()>,
}

impl CaDir {
    fn new() -> CaDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path();
        std::fs::create_dir(path.join("issued")).expect("create issued/");
        std::fs::write(path.join("index.txt"), "").expect("write index.txt");
        let config = path.join("ca.cnf");
        std::fs::write(
            &config,
            format!(
                "[ ca ]\n\
                 default_ca = CA_default\n\
                 [ CA_default ]\n\
                 database = {db}\n\
                 new_certs_dir = {issued}\n\
                 rand_serial = yes\n\
                 unique_subject = no\n\
                 default_md = sha256\n\
                 policy = policy_any\n\
                 email_in_dn = no\n\
                 copy_extensions = none\n\
                 [ policy_any ]\n\
                 organizationName = optional\n\
                 commonName = supplied\n",
                db = path.join("index.txt").display(),
                issued = path.join("issued").display(),
            ),
        )
        .expect("write ca.cnf");
        CaDir {
            dir,
            config,
            counter: AtomicU64::new(0),
            lock: Mutex::new(()),
        }
    }

    /// A new, unused file path ending in `suffix`.
    fn file(&self, suffix: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("f{n}{suffix}"))
    }

    /// A new private key, PKCS#8 PEM.
    fn genkey(&self, alg: KeyAlg) -> PathBuf {
        let path = self.file(".key");
        let mut cmd = openssl();
        cmd.arg("genpkey");
        match alg {
            KeyAlg::P256 | KeyAlg::P384 | KeyAlg::P521 => {
                let curve = match alg {
                    KeyAlg::P256 => "P-256",
                    KeyAlg::P384 => "P-384",
                    _ => "P-521",
                };
                cmd.args(["-algorithm", "EC", "-pkeyopt"])
                    .arg(format!("ec_paramgen_curve:{curve}"))
                    .args(["-pkeyopt", "ec_param_enc:named_curve"]);
            }
            KeyAlg::Rsa(bits) => {
                cmd.args(["-algorithm", "RSA", "-pkeyopt"])
                    .arg(format!("rsa_keygen_bits:{bits}"));
            }
            KeyAlg::Ed25519 => {
                cmd.args(["-algorithm", "ED25519"]);
            }
        }
        run(cmd.arg("-out").arg(&path));
        path
    }

    /// Issues a certificate for `key`: self-signed if `issuer` is `None`, else signed by
    /// (issuer cert, issuer key). Returns the path of the PEM certificate.
    fn issue(&self, key: &Path, spec: &Spec, issuer: Option<(&Path, &Path)>) -> PathBuf {
        let csr = self.file(".csr");
        let ext = self.file(".ext");
        let cert = self.file(".pem");
        run(openssl()
            .args(["req", "-new", "-key"])
            .arg(key)
            .args(["-subj", &spec.subject, "-out"])
            .arg(&csr));
        std::fs::write(&ext, spec.extensions()).expect("write extension file");
        let mut cmd = openssl();
        cmd.args(["ca", "-batch", "-notext", "-preserveDN", "-config"])
            .arg(&self.config)
            .args(["-md", spec.md])
            .args(["-startdate", &asn1_time(spec.not_before)])
            .args(["-enddate", &asn1_time(spec.not_after)])
            .arg("-extfile")
            .arg(&ext)
            .args(["-extensions", "ext", "-in"])
            .arg(&csr)
            .arg("-out")
            .arg(&cert);
        match issuer {
            None => cmd.arg("-selfsign").arg("-keyfile").arg(key),
            Some((issuer_cert, issuer_key)) => cmd
                .arg("-cert")
                .arg(issuer_cert)
                .arg("-keyfile")
                .arg(issuer_key),
        };
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        run(&mut cmd);
        cert
    }
}

fn openssl() -> Command {
    let mut cmd = Command::new("openssl");
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs an openssl command; panics with its stderr if it fails. Returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("openssl runs ({e}); it is /usr/bin/openssl: {cmd:?}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("openssl prints UTF-8")
}

/// Runs `openssl args...` with `input` on stdin; panics with its stderr if it fails.
fn run_stdin(args: &[&str], input: &str) -> String {
    let mut child = openssl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("openssl runs ({e}); it is /usr/bin/openssl"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("openssl finishes");
    writer.join().expect("writer").expect("write to openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("openssl prints UTF-8")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn now_unix() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    i64::try_from(secs).expect("a sane clock")
}

/// `openssl ca -startdate/-enddate` form of a Unix time: UTCTime `YYMMDDHHMMSSZ` from 1950 to
/// 2049, GeneralizedTime `YYYYMMDDHHMMSSZ` otherwise (as RFC 5280 wants).
fn asn1_time(unix: i64) -> String {
    let secs = unix.rem_euclid(DAY);
    let (y, m, d) = civil_from_days(unix.div_euclid(DAY));
    let (hh, mm, ss) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if (1950..2050).contains(&y) {
        format!("{:02}{m:02}{d:02}{hh:02}{mm:02}{ss:02}Z", y % 100)
    } else {
        format!("{y:04}{m:02}{d:02}{hh:02}{mm:02}{ss:02}Z")
    }
}

/// (year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The same key in traditional form: SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`.
fn traditional(key_pem: &str) -> String {
    run_stdin(&["pkey", "-traditional"], key_pem)
}

/// A PEM block labelled `label` holding `len` random bytes.
fn random_block(label: &str, len: usize) -> String {
    let b64 = run(openssl().args(["rand", "-base64", &len.to_string()]));
    format!("-----BEGIN {label}-----\n{b64}-----END {label}-----\n")
}

/// `pem` with a run of its base64 body, in the middle, replaced by `!!!!`.
fn damage(pem: &str) -> String {
    let mut lines: Vec<String> = pem.lines().map(str::to_owned).collect();
    let middle = lines.len() / 2;
    assert!(
        middle > 0 && lines[middle].len() >= 32,
        "a certificate body to damage"
    );
    lines[middle].replace_range(20..24, "!!!!");
    lines.join("\n") + "\n"
}

/// Generates every case. Slow-ish (RSA keygen), so callers generate once per test binary.
pub fn bundles() -> Vec<Bundle> {
    let pki = &Pki::new();
    let other = &Pki::named("certplane other");
    let mut out = std::thread::scope(|s| {
        // RSA key generation dominates; run it beside the ECDSA cases.
        let rsa_keys = [4096, 3072, 2048, 1024]
            .map(|bits| (bits, s.spawn(move || pki.ca.genkey(KeyAlg::Rsa(bits)))));
        let mut out = ecdsa_cases(pki, other);
        let [k4096, k3072, k2048, k1024] = rsa_keys.map(|(bits, handle)| {
            handle
                .join()
                .unwrap_or_else(|_| panic!("RSA {bits} key generation"))
        });
        out.extend(rsa_cases(pki, &k1024, &k2048, &k3072, &k4096));
        out
    });
    out.sort_by_key(|b| {
        CASE_NAMES
            .iter()
            .position(|n| *n == b.name)
            .unwrap_or_else(|| panic!("{} is listed in CASE_NAMES", b.name))
    });
    out
}

fn accepted(warnings: &[&'static str], key_type: &'static str) -> Expected {
    Expected::Accepted {
        warnings: warnings.to_vec(),
        key_type,
    }
}

fn bundle(
    name: &'static str,
    hostname: &str,
    fullchain: String,
    private_key: String,
    expected: Expected,
) -> Bundle {
    Bundle {
        name,
        hostname: hostname.to_owned(),
        fullchain,
        private_key,
        expected,
    }
}

fn ecdsa_cases(pki: &Pki, other: &Pki) -> Vec<Bundle> {
    let ecdsa = |warnings: &[&'static str]| accepted(warnings, "ecdsa");
    let root = pki.root_pem();
    let inter = pki.intermediate_pem();
    let now = now_unix();

    // The default leaf: ECDSA P-256, SAN www.import.test.
    let leaf_key_path = pki.ca.genkey(KeyAlg::P256);
    let leaf_cert_path = pki.issue(&leaf_key_path, &Spec::server(&[HOST], false));
    let (leaf, key) = (read(&leaf_cert_path), read(&leaf_key_path));
    let chain = format!("{leaf}{inter}");
    let with = |f: &dyn Fn(&mut Spec)| {
        let mut spec = Spec::server(&[HOST], false);
        f(&mut spec);
        spec
    };

    let mut out = vec![
        bundle(
            "ecdsa_p256_pkcs8",
            HOST,
            chain.clone(),
            key.clone(),
            ecdsa(&[UNTRUSTED]),
        ),
        bundle(
            "ecdsa_p256_sec1",
            HOST,
            chain.clone(),
            traditional(&key),
            ecdsa(&[UNTRUSTED]),
        ),
    ];

    let (p384, p384_key) = pki.keyed_leaf(KeyAlg::P384, &Spec::server(&[HOST], false));
    out.push(bundle(
        "ecdsa_p384_pkcs8",
        HOST,
        format!("{p384}{inter}"),
        p384_key,
        ecdsa(&[UNTRUSTED]),
    ));

    out.push(bundle(
        "crlf_line_endings",
        HOST,
        chain.replace('\n', "\r\n"),
        key.replace('\n', "\r\n"),
        ecdsa(&[UNTRUSTED]),
    ));

    // What `openssl x509 -text` and `openssl pkcs12 -nodes` print: text, then the PEM block.
    let inter_path = pki.intermediate_cert.as_path();
    let texts: String = [leaf_cert_path.as_path(), inter_path]
        .iter()
        .map(|p| run(openssl().args(["x509", "-text", "-in"]).arg(p)))
        .collect();
    let p12 = pki.ca.file(".p12");
    run(openssl()
        .args(["pkcs12", "-export", "-passout", "pass:x", "-name", HOST])
        .arg("-inkey")
        .arg(&leaf_key_path)
        .arg("-in")
        .arg(&leaf_cert_path)
        .arg("-out")
        .arg(&p12));
    let bag_key = run(openssl()
        .args(["pkcs12", "-nocerts", "-nodes", "-passin", "pass:x", "-in"])
        .arg(&p12));
    assert!(bag_key.starts_with("Bag Attributes"), "{bag_key}");
    out.push(bundle(
        "explanatory_text",
        HOST,
        texts,
        bag_key,
        ecdsa(&[UNTRUSTED]),
    ));

    out.push(bundle(
        "root_included",
        HOST,
        format!("{chain}{root}"),
        key.clone(),
        ecdsa(&[UNTRUSTED, "ROOT_DROPPED"]),
    ));
    out.push(bundle(
        "reordered",
        HOST,
        format!("{inter}{leaf}"),
        key.clone(),
        ecdsa(&[UNTRUSTED, "CHAIN_REORDERED"]),
    ));
    out.push(bundle(
        "leaf_only_missing_intermediate",
        HOST,
        leaf.clone(),
        key.clone(),
        ecdsa(&["CHAIN_INCOMPLETE"]),
    ));

    let (wild, wild_key) = pki.keyed_leaf(KeyAlg::P256, &Spec::server(&[WILDCARD], false));
    let wild_chain = format!("{wild}{inter}");
    out.push(bundle(
        "wildcard_covers_subdomain",
        HOST,
        wild_chain.clone(),
        wild_key.clone(),
        ecdsa(&[UNTRUSTED]),
    ));
    out.push(bundle(
        "wildcard_hostname_wildcard_san",
        WILDCARD,
        wild_chain.clone(),
        wild_key.clone(),
        ecdsa(&[UNTRUSTED]),
    ));

    let key_first = format!("{key}{chain}");
    out.push(bundle(
        "combined_file_key_first",
        HOST,
        key_first.clone(),
        key_first,
        ecdsa(&[UNTRUSTED]),
    ));
    let chain_first = format!("{chain}{key}");
    out.push(bundle(
        "combined_file_chain_first",
        HOST,
        chain_first.clone(),
        chain_first,
        ecdsa(&[UNTRUSTED]),
    ));

    let (self_signed, self_key) = pki.keyed_leaf(
        KeyAlg::P256,
        &with(&|s| {
            s.self_signed = true;
        }),
    );
    out.push(bundle(
        "self_signed_leaf",
        HOST,
        self_signed,
        self_key,
        ecdsa(&[UNTRUSTED]),
    ));

    // Refused by content.
    let refused = Expected::Refused;
    out.push(bundle(
        "no_certificate",
        HOST,
        "This file holds no certificate, only this sentence.\n".to_owned(),
        key.clone(),
        refused("CERT_MISSING"),
    ));
    out.push(bundle(
        "no_key",
        HOST,
        chain.clone(),
        "This file holds no private key, only this sentence.\n".to_owned(),
        refused("KEY_MISSING"),
    ));
    out.push(bundle(
        "damaged_pem",
        HOST,
        format!("{}{inter}", damage(&leaf)),
        key.clone(),
        refused("PEM_INVALID"),
    ));
    out.push(bundle(
        "not_a_certificate",
        HOST,
        format!("{}{inter}", random_block("CERTIFICATE", 300)),
        key.clone(),
        refused("CERT_INVALID"),
    ));
    let other_key = read(&pki.ca.genkey(KeyAlg::P256));
    out.push(bundle(
        "two_keys",
        HOST,
        chain.clone(),
        format!("{key}{other_key}"),
        refused("KEY_MULTIPLE"),
    ));
    out.push(bundle(
        "encrypted_pkcs8",
        HOST,
        chain.clone(),
        run_stdin(
            &[
                "pkcs8",
                "-topk8",
                "-v2",
                "aes-256-cbc",
                "-passout",
                "pass:secret",
            ],
            &key,
        ),
        refused("KEY_ENCRYPTED"),
    ));
    out.push(bundle(
        "key_mismatch",
        HOST,
        chain.clone(),
        other_key,
        refused("KEY_MISMATCH"),
    ));

    // Refused by hostname.
    let (other_name, other_name_key) =
        pki.keyed_leaf(KeyAlg::P256, &Spec::server(&["other.import.test"], false));
    out.push(bundle(
        "hostname_not_covered",
        HOST,
        format!("{other_name}{inter}"),
        other_name_key,
        refused("CERT_HOSTNAME_MISMATCH"),
    ));
    out.push(bundle(
        "wildcard_does_not_cover_apex",
        "import.test",
        wild_chain.clone(),
        wild_key.clone(),
        refused("CERT_HOSTNAME_MISMATCH"),
    ));
    out.push(bundle(
        "wildcard_does_not_cover_two_levels",
        "a.b.import.test",
        wild_chain,
        wild_key,
        refused("CERT_HOSTNAME_MISMATCH"),
    ));
    out.push(bundle(
        "wildcard_hostname_needs_wildcard_san",
        WILDCARD,
        chain.clone(),
        key.clone(),
        refused("CERT_HOSTNAME_MISMATCH"),
    ));

    // Refused by the leaf's contents.
    let leaf_case = |name, alg, spec: &Spec, code| {
        let (cert, cert_key) = pki.keyed_leaf(alg, spec);
        bundle(
            name,
            HOST,
            format!("{cert}{inter}"),
            cert_key,
            refused(code),
        )
    };
    out.push(leaf_case(
        "no_san",
        KeyAlg::P256,
        &with(&|s| s.sans.clear()),
        "CERT_SAN_MISSING",
    ));
    out.push(leaf_case(
        "expired",
        KeyAlg::P256,
        &with(&|s| {
            s.not_before = now - 30 * DAY;
            s.not_after = now - 2 * DAY;
        }),
        "CERT_EXPIRED",
    ));
    out.push(leaf_case(
        "not_yet_valid",
        KeyAlg::P256,
        &with(&|s| {
            s.not_before = now + 2 * DAY;
            s.not_after = now + 92 * DAY;
        }),
        "CERT_NOT_YET_VALID",
    ));
    out.push(leaf_case(
        "ed25519",
        KeyAlg::Ed25519,
        &Spec::server(&[HOST], false),
        "KEY_UNSUPPORTED",
    ));
    out.push(leaf_case(
        "secp521r1",
        KeyAlg::P521,
        &Spec::server(&[HOST], false),
        "KEY_UNSUPPORTED",
    ));
    // OpenSSL 3.0 signs ecdsa-with-SHA1 at its default security level.
    out.push(leaf_case(
        "sha1_signature",
        KeyAlg::P256,
        &with(&|s| s.md = "sha1"),
        "SIGNATURE_WEAK",
    ));
    // A CA certificate that is otherwise a good server certificate (SAN, serverAuth,
    // digitalSignature), signed by the intermediate: only CA:TRUE is wrong, and every
    // certificate in the chain is a CA.
    out.push(leaf_case(
        "leaf_is_ca",
        KeyAlg::P256,
        &with(&|s| {
            s.ca = true;
            s.key_usage = "digitalSignature, keyCertSign, cRLSign";
        }),
        "CERT_IS_CA",
    ));
    out.push(bundle(
        "chain_broken",
        HOST,
        format!("{leaf}{}", other.intermediate_pem()),
        key.clone(),
        refused("CHAIN_BROKEN"),
    ));
    out.push(leaf_case(
        "wrong_eku",
        KeyAlg::P256,
        &with(&|s| s.eku = Some("clientAuth")),
        "CERT_WRONG_USAGE",
    ));

    let mut padding = String::with_capacity(300 * 1024 + 100);
    let mut line = 0;
    while padding.len() < 300 * 1024 {
        line += 1;
        let _ = writeln!(
            padding,
            "padding line {line:06}: text outside any PEM block, to make the file too large."
        );
    }
    out.push(bundle(
        "too_large",
        HOST,
        format!("{chain}{padding}"),
        key.clone(),
        refused("IMPORT_TOO_LARGE"),
    ));
    out.push(bundle(
        "key_invalid",
        HOST,
        chain,
        random_block("PRIVATE KEY", 120),
        refused("KEY_INVALID"),
    ));
    out
}

fn rsa_cases(pki: &Pki, k1024: &Path, k2048: &Path, k3072: &Path, k4096: &Path) -> Vec<Bundle> {
    let inter = pki.intermediate_pem();
    let rsa_spec = Spec::server(&[HOST], true);
    let chain_for = |key: &Path| format!("{}{inter}", read(&pki.issue(key, &rsa_spec)));
    let rsa = || accepted(&[UNTRUSTED], "rsa");
    let chain2048 = chain_for(k2048);
    let key2048 = read(k2048);
    vec![
        bundle(
            "rsa2048_pkcs1",
            HOST,
            chain2048.clone(),
            traditional(&key2048),
            rsa(),
        ),
        bundle("rsa3072_pkcs8", HOST, chain_for(k3072), read(k3072), rsa()),
        bundle("rsa4096_pkcs8", HOST, chain_for(k4096), read(k4096), rsa()),
        bundle(
            "encrypted_legacy",
            HOST,
            chain2048,
            run_stdin(
                &["rsa", "-aes256", "-traditional", "-passout", "pass:secret"],
                &key2048,
            ),
            Expected::Refused("KEY_ENCRYPTED"),
        ),
        bundle(
            "rsa1024",
            HOST,
            chain_for(k1024),
            read(k1024),
            Expected::Refused("KEY_TOO_WEAK"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// PEM blocks of `text` (CRLF normalised): (label, block text with its headers).
    fn blocks(text: &str) -> Vec<(String, String)> {
        let text = text.replace("\r\n", "\n");
        let mut out = Vec::new();
        let mut current: Option<(String, String)> = None;
        for line in text.lines() {
            if let Some(label) = line
                .strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
            {
                current = Some((label.to_owned(), format!("{line}\n")));
            } else if let Some((label, mut block)) = current.take() {
                block.push_str(line);
                block.push('\n');
                if line == format!("-----END {label}-----") {
                    out.push((label, block));
                } else {
                    current = Some((label, block));
                }
            }
        }
        out
    }

    /// Runs openssl with `input` on stdin: (success, stdout + stderr).
    fn try_openssl(args: &[&str], input: &str) -> (bool, String) {
        let mut child = openssl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write to openssl");
        let out = child.wait_with_output().expect("openssl finishes");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    #[derive(Debug)]
    struct Cert {
        pem: String,
        text: String,
        subject: String,
        issuer: String,
        pubkey: String,
    }

    impl Cert {
        fn parse(pem: &str) -> Option<Cert> {
            let (ok, text) = try_openssl(&["x509", "-noout", "-text"], pem);
            if !ok {
                return None;
            }
            let names = run_stdin(&["x509", "-noout", "-subject", "-issuer"], pem);
            let field = |prefix: &str| {
                names
                    .lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .expect("openssl prints subject and issuer")
                    .to_owned()
            };
            Some(Cert {
                pem: pem.to_owned(),
                subject: field("subject="),
                issuer: field("issuer="),
                pubkey: run_stdin(&["x509", "-noout", "-pubkey"], pem),
                text,
            })
        }

        fn is_ca(&self) -> bool {
            self.text.contains("CA:TRUE")
        }

        fn self_issued(&self) -> bool {
            self.subject == self.issuer
        }

        fn covers(&self, hostname: &str) -> bool {
            if hostname.starts_with("*.") {
                let sans = self
                    .text
                    .lines()
                    .skip_while(|l| !l.contains("Subject Alternative Name"))
                    .nth(1)
                    .unwrap_or_default();
                sans.split(", ")
                    .any(|san| san.trim() == format!("DNS:{hostname}"))
            } else {
                let (_, out) = try_openssl(&["x509", "-noout", "-checkhost", hostname], &self.pem);
                out.contains("does match")
            }
        }

        /// `openssl verify` of this certificate as a TLS server, trusting `anchors` (PEM).
        fn verify(&self, anchors: &str) -> (bool, String) {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let ca = dir.path().join("anchors.pem");
            std::fs::write(&ca, anchors).expect("write anchors");
            let ca = ca.to_str().expect("UTF-8 path");
            let (ok, out) = try_openssl(
                &[
                    "verify",
                    "-partial_chain",
                    "-purpose",
                    "sslserver",
                    "-CAfile",
                    ca,
                ],
                &self.pem,
            );
            (ok && out.contains("OK"), out)
        }
    }

    /// The public key of a private key block, if it reads without a passphrase.
    fn key_pubkey(block: &str) -> Option<String> {
        let (ok, out) = try_openssl(&["pkey", "-pubout", "-passin", "pass:"], block);
        ok.then_some(out)
    }

    fn key_blocks(text: &str) -> Vec<String> {
        blocks(text)
            .into_iter()
            .filter(|(label, _)| label.ends_with("PRIVATE KEY"))
            .map(|(_, block)| block)
            .collect()
    }

    fn certs(text: &str) -> Vec<Cert> {
        blocks(text)
            .into_iter()
            .filter(|(label, _)| label == "CERTIFICATE")
            .map(|(_, block)| Cert::parse(&block).expect("a certificate block parses"))
            .collect()
    }

    /// The chain's leaf: the certificate that issues none of the others.
    fn leaf(certs: &[Cert]) -> &Cert {
        certs
            .iter()
            .find(|c| {
                !certs
                    .iter()
                    .any(|o| !std::ptr::eq(*c, o) && o.issuer == c.subject && !o.self_issued())
            })
            .expect("a leaf")
    }

    fn check_accepted(b: &Bundle, warnings: &[&str], key_type: &str) {
        let name = b.name;
        let keys = key_blocks(&b.private_key);
        assert_eq!(keys.len(), 1, "{name}: one key");
        let pubkey = key_pubkey(&keys[0]).unwrap_or_else(|| panic!("{name}: key reads"));
        let certs = certs(&b.fullchain);
        assert!(!certs.is_empty(), "{name}: certificates");
        let leaf = leaf(&certs);
        assert!(!leaf.is_ca(), "{name}: leaf is not a CA");
        assert_eq!(leaf.pubkey, pubkey, "{name}: key matches the leaf");
        assert!(leaf.covers(&b.hostname), "{name}: covers {}", b.hostname);
        let algorithm = match key_type {
            "rsa" => "rsaEncryption",
            "ecdsa" => "id-ecPublicKey",
            other => panic!("{name}: key type {other}"),
        };
        assert!(leaf.text.contains(algorithm), "{name}: {key_type} key");
        // Time, signature, EKU/key usage; and the chain, when there is one.
        let anchors: String = if certs.len() == 1 {
            leaf.pem.clone()
        } else {
            certs
                .iter()
                .filter(|c| !std::ptr::eq(*c, leaf))
                .map(|c| c.pem.clone())
                .collect()
        };
        let (ok, out) = leaf.verify(&anchors);
        assert!(ok, "{name}: verifies:\n{out}");
        let reordered = !std::ptr::eq(&certs[0], leaf);
        let root = certs.len() > 1 && certs.iter().any(|c| c.is_ca() && c.self_issued());
        let incomplete = certs.len() == 1 && !leaf.self_issued();
        let mut implied: Vec<&str> = Vec::new();
        implied.push(if incomplete {
            "CHAIN_INCOMPLETE"
        } else {
            UNTRUSTED
        });
        if root {
            implied.push("ROOT_DROPPED");
        }
        if reordered {
            implied.push("CHAIN_REORDERED");
        }
        let mut expected = warnings.to_vec();
        expected.sort_unstable();
        implied.sort_unstable();
        assert_eq!(expected, implied, "{name}: warnings");
    }

    fn check_refused(b: &Bundle, code: &str) {
        let name = b.name;
        let keys = key_blocks(&b.private_key);
        let cert_blocks: Vec<String> = blocks(&b.fullchain)
            .into_iter()
            .filter(|(label, _)| label == "CERTIFICATE")
            .map(|(_, block)| block)
            .collect();
        let parsed: Vec<Option<Cert>> = cert_blocks.iter().map(|b| Cert::parse(b)).collect();
        // Everything the case is not about is sound: one readable key matching the leaf.
        let sound_key = keys.len() == 1 && key_pubkey(&keys[0]).is_some();
        let sound_certs = !parsed.is_empty() && parsed.iter().all(Option::is_some);
        if !matches!(
            code,
            "CERT_MISSING" | "PEM_INVALID" | "CERT_INVALID" | "IMPORT_TOO_LARGE"
        ) {
            assert!(sound_certs, "{name}: certificates parse");
        }
        if !matches!(
            code,
            "KEY_MISSING" | "KEY_MULTIPLE" | "KEY_ENCRYPTED" | "KEY_INVALID"
        ) {
            assert!(sound_key, "{name}: one readable key");
        }
        let certs: Vec<Cert> = parsed.into_iter().flatten().collect();
        let first = certs.first();
        if sound_key && sound_certs && code != "KEY_MISMATCH" {
            let pubkey = key_pubkey(&keys[0]).expect("key reads");
            assert_eq!(first.expect("a leaf").pubkey, pubkey, "{name}: key matches");
        }
        let first = || first.unwrap_or_else(|| panic!("{name}: a leaf"));
        let rest = || -> String { certs[1..].iter().map(|c| c.pem.clone()).collect() };
        match code {
            "CERT_MISSING" => assert!(cert_blocks.is_empty() && !b.fullchain.trim().is_empty()),
            "KEY_MISSING" => assert!(keys.is_empty()),
            "PEM_INVALID" => {
                assert!(b.fullchain.contains("!!!!"));
                assert!(Cert::parse(&cert_blocks[0]).is_none());
            }
            "CERT_INVALID" => {
                assert!(!b.fullchain.contains('!'));
                assert!(Cert::parse(&cert_blocks[0]).is_none());
                let body: String = cert_blocks[0]
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                // The body is good base64 (of random bytes): a valid PEM block, not a certificate.
                let decoded = std::env::temp_dir().join(format!("pki-{}.bin", std::process::id()));
                run_stdin(
                    &["base64", "-d", "-out", decoded.to_str().expect("UTF-8")],
                    &body,
                );
                let len = std::fs::read(&decoded).expect("decoded bytes").len();
                std::fs::remove_file(&decoded).ok();
                assert_eq!(len, 300, "{name}: 300 random bytes");
            }
            "KEY_INVALID" => {
                assert_eq!(keys.len(), 1);
                assert!(key_pubkey(&keys[0]).is_none());
            }
            "KEY_MULTIPLE" => {
                assert_eq!(keys.len(), 2);
                let a = key_pubkey(&keys[0]).expect("first key reads");
                let b = key_pubkey(&keys[1]).expect("second key reads");
                assert_ne!(a, b, "{name}: two different keys");
            }
            "KEY_ENCRYPTED" => {
                assert_eq!(keys.len(), 1);
                assert!(keys[0].contains("ENCRYPTED"));
                assert!(key_pubkey(&keys[0]).is_none(), "{name}: needs a passphrase");
                let (ok, decrypted) =
                    try_openssl(&["pkey", "-pubout", "-passin", "pass:secret"], &keys[0]);
                assert!(ok, "{name}: decrypts with the passphrase");
                assert_eq!(first().pubkey, decrypted, "{name}: the leaf's key");
            }
            "KEY_MISMATCH" => {
                let pubkey = key_pubkey(&keys[0]).expect("key reads");
                assert_ne!(first().pubkey, pubkey);
            }
            "CERT_HOSTNAME_MISMATCH" => {
                assert!(!first().covers(&b.hostname));
                assert!(first().verify(&rest()).0, "{name}: otherwise valid");
            }
            "CERT_SAN_MISSING" => {
                assert!(!first().text.contains("Subject Alternative Name"));
                assert!(first().subject.contains(HOST));
            }
            "CERT_EXPIRED" => {
                let (ok, out) = first().verify(&rest());
                assert!(!ok && out.contains("certificate has expired"), "{out}");
            }
            "CERT_NOT_YET_VALID" => {
                let (ok, out) = first().verify(&rest());
                assert!(!ok && out.contains("not yet valid"), "{out}");
            }
            "KEY_TOO_WEAK" => assert!(first().text.contains("Public-Key: (1024 bit)")),
            "KEY_UNSUPPORTED" => assert!(
                first().text.contains("ED25519") || first().text.contains("NIST CURVE: P-521")
            ),
            "SIGNATURE_WEAK" => assert!(
                first()
                    .text
                    .contains("Signature Algorithm: ecdsa-with-SHA1")
            ),
            "CERT_IS_CA" => {
                assert!(certs.iter().all(Cert::is_ca), "{name}: only CAs");
                assert!(first().covers(&b.hostname));
            }
            "CHAIN_BROKEN" => {
                assert_eq!(certs.len(), 2);
                assert_ne!(certs[0].issuer, certs[1].subject);
                assert!(certs[1].is_ca());
                assert!(!first().verify(&rest()).0);
            }
            "CERT_WRONG_USAGE" => {
                assert!(first().text.contains("TLS Web Client Authentication"));
                assert!(!first().text.contains("TLS Web Server Authentication"));
                let (ok, out) = first().verify(&rest());
                assert!(
                    !ok && out.contains("unsuitable certificate purpose"),
                    "{out}"
                );
            }
            "IMPORT_TOO_LARGE" => {
                assert!(b.fullchain.len() > 300 * 1024);
                assert!(sound_certs);
            }
            other => panic!("{name}: unexpected code {other}"),
        }
    }

    #[test]
    fn dates() {
        assert_eq!(asn1_time(0), "700101000000Z");
        assert_eq!(asn1_time(951_782_400), "000229000000Z");
        assert_eq!(asn1_time(1_767_225_599), "251231235959Z");
        assert_eq!(asn1_time(2_524_608_000), "20500101000000Z");
    }

    #[test]
    fn leaf_is_backdated_and_signed_by_the_intermediate() {
        let pki = Pki::new();
        let (leaf_pem, key_pem) = pki.leaf(&["a.import.test", "b.import.test"], 30);
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let leaf = Cert::parse(&leaf_pem).expect("leaf parses");
        assert!(leaf.covers("b.import.test"));
        assert_eq!(leaf.pubkey, key_pubkey(&key_pem).expect("key reads"));
        let anchors = pki.intermediate_pem();
        assert!(leaf.verify(&anchors).0);
        assert!(leaf.verify(&format!("{}{anchors}", pki.root_pem())).0);
        let (_, ends) = try_openssl(
            &["x509", "-noout", "-checkend", &(29 * DAY).to_string()],
            &leaf_pem,
        );
        assert!(ends.contains("will not expire"), "{ends}");
        let (_, ends) = try_openssl(
            &["x509", "-noout", "-checkend", &(31 * DAY).to_string()],
            &leaf_pem,
        );
        assert!(ends.contains("will expire"), "{ends}");
    }

    #[test]
    fn generates_every_case() {
        let started = std::time::Instant::now();
        let bundles = bundles();
        eprintln!("bundles() took {:?}", started.elapsed());
        assert!(bundles.len() >= 39, "{} cases", bundles.len());
        let names: HashSet<&str> = bundles.iter().map(|b| b.name).collect();
        assert_eq!(names.len(), bundles.len(), "unique names");
        let listed: Vec<&str> = bundles.iter().map(|b| b.name).collect();
        assert_eq!(listed, CASE_NAMES);
        for b in &bundles {
            assert!(
                b.hostname == "import.test" || b.hostname.ends_with(".import.test"),
                "{}: hostname {}",
                b.name,
                b.hostname
            );
            match &b.expected {
                Expected::Accepted { warnings, key_type } => {
                    check_accepted(b, warnings, key_type);
                }
                Expected::Refused(code) => check_refused(b, code),
            }
        }
        let by_name = |n: &str| bundles.iter().find(|b| b.name == n).expect("case");
        assert!(
            by_name("ecdsa_p256_sec1")
                .private_key
                .contains("BEGIN EC PRIVATE KEY")
        );
        assert!(
            by_name("rsa2048_pkcs1")
                .private_key
                .contains("BEGIN RSA PRIVATE KEY")
        );
        assert!(
            by_name("rsa3072_pkcs8").fullchain.len() > by_name("rsa2048_pkcs1").fullchain.len()
        );
        let crlf = by_name("crlf_line_endings");
        assert!(crlf.fullchain.contains("\r\n") && crlf.private_key.contains("\r\n"));
        assert!(!crlf.fullchain.replace("\r\n", "").contains('\n'));
        let text = by_name("explanatory_text");
        assert!(text.fullchain.starts_with("Certificate:"));
        assert_eq!(text.fullchain.matches("Certificate:").count(), 2);
        assert!(text.private_key.starts_with("Bag Attributes"));
        for n in ["combined_file_key_first", "combined_file_chain_first"] {
            let b = by_name(n);
            assert_eq!(b.fullchain, b.private_key, "{n}");
        }
        assert!(
            by_name("combined_file_key_first")
                .fullchain
                .starts_with("-----BEGIN PRIVATE KEY")
        );
        assert!(
            by_name("combined_file_chain_first")
                .fullchain
                .starts_with("-----BEGIN CERTIFICATE")
        );
        assert!(
            by_name("encrypted_legacy")
                .private_key
                .contains("Proc-Type: 4,ENCRYPTED")
        );
        assert!(
            by_name("encrypted_pkcs8")
                .private_key
                .contains("BEGIN ENCRYPTED PRIVATE KEY")
        );
        assert!(
            by_name("rsa4096_pkcs8")
                .fullchain
                .contains("-----BEGIN CERTIFICATE")
        );
        let rsa_bits = |n: &str, bits: u32| {
            let certs = certs(&by_name(n).fullchain);
            assert!(
                certs[0].text.contains(&format!("Public-Key: ({bits} bit)")),
                "{n}: {bits} bits"
            );
        };
        rsa_bits("rsa2048_pkcs1", 2048);
        rsa_bits("rsa3072_pkcs8", 3072);
        rsa_bits("rsa4096_pkcs8", 4096);
        assert!(
            certs(&by_name("ecdsa_p384_pkcs8").fullchain)[0]
                .text
                .contains("NIST CURVE: P-384")
        );
        assert!(
            certs(&by_name("ecdsa_p256_pkcs8").fullchain)[0]
                .text
                .contains("NIST CURVE: P-256")
        );
        let self_signed = &certs(&by_name("self_signed_leaf").fullchain)[0];
        assert!(self_signed.self_issued() && !self_signed.is_ca());
    }
}
