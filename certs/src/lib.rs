//! Development and test TLS material for Wharf: a throwaway certificate authority, a server
//! certificate and client certificates, written as PEM files (`wharf certs`, certs/README.md).
//!
//! Nothing made here is meant for real use: the CA's key sits next to its certificate, and every
//! run makes a new CA. Tests call [`generate`] (through `wharf certs`) into a temporary directory.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Names always in the server certificate: a client on this machine can connect by any of them.
pub const SERVER_NAMES_BUILTIN: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// File names inside the output directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";

/// `client-<name>.pem`.
pub fn client_cert_file(name: &str) -> String {
    format!("client-{name}.pem")
}

/// `client-<name>-key.pem`.
pub fn client_key_file(name: &str) -> String {
    format!("client-{name}-key.pem")
}

/// `wharf certs`: what to make.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Directory to write the PEM files into (created if missing; existing files are replaced)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Extra DNS name or IP address for the server certificate, besides localhost, 127.0.0.1
    /// and ::1 (repeatable)
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_names: Vec<String>,
    /// Make a client certificate whose subject CN is this user name (repeatable)
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// Make a client certificate for this user name that expired yesterday, for tests of
    /// refusal (repeatable)
    #[arg(long = "expired-client", value_name = "NAME")]
    pub expired_clients: Vec<String>,
    /// Days the certificates stay valid
    #[arg(long, value_name = "DAYS", default_value_t = 365)]
    pub days: u32,
}

/// Why the material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// (user name, certificate, key), valid and expired ones alike.
    pub clients: Vec<(String, PathBuf, PathBuf)>,
}

impl Written {
    /// A `[tls]` table for wharf's configuration file using these files (mutual TLS with
    /// certificate login on).
    pub fn config_snippet(&self) -> String {
        format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\nverify_peer = true\n\
             fail_if_no_peer_cert = false\ncert_login = true\n",
            self.server_cert.display().to_string(),
            self.server_key.display().to_string(),
            self.ca_cert.display().to_string(),
        )
    }
}

/// A user name usable in a file name and as a certificate CN.
fn check_client_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "client name {name:?}: use 1 to 64 of A-Z a-z 0-9 . _ - @ (not starting with a dot)"
        )))
    }
}

/// Makes a new CA, a server certificate and the asked client certificates in `args.out`.
///
/// # Errors
/// A bad name, a write that failed, or (unlikely) a key generation error.
pub fn generate(args: &CertsArgs) -> Result<Written, Error> {
    for name in args.clients.iter().chain(&args.expired_clients) {
        check_client_name(name)?;
    }
    if args.days == 0 {
        return Err(Error::Invalid("--days must be at least 1".into()));
    }
    let out = &args.out;
    fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.clone(),
        source,
    })?;
    let now = OffsetDateTime::now_utc();
    // An hour back: a client whose clock is a little behind still accepts the certificates.
    let not_before = now - Duration::hours(1);
    let not_after = now + Duration::days(i64::from(args.days));

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = dn("Wharf development CA (not for production)");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut written = Written {
        ca_cert: out.join(CA_CERT),
        ca_key: out.join(CA_KEY),
        server_cert: out.join(SERVER_CERT),
        server_key: out.join(SERVER_KEY),
        clients: Vec::new(),
    };
    write_file(&written.ca_cert, &ca.pem(), false)?;
    write_file(&written.ca_key, &ca_key_pem, true)?;

    let mut names: Vec<String> = SERVER_NAMES_BUILTIN.iter().map(|s| s.to_string()).collect();
    for n in &args.server_names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    // rcgen turns names that parse as IP addresses into IP SANs, the rest into DNS SANs.
    let mut server = CertificateParams::new(names)?;
    server.distinguished_name = dn("localhost");
    server.is_ca = IsCa::ExplicitNoCa;
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = not_before;
    server.not_after = not_after;
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca)?;
    write_file(&written.server_cert, &server_cert.pem(), false)?;
    write_file(&written.server_key, &server_key.serialize_pem(), true)?;

    let expired = (now - Duration::days(2), now - Duration::days(1));
    let clients = args
        .clients
        .iter()
        .map(|n| (n, (not_before, not_after)))
        .chain(args.expired_clients.iter().map(|n| (n, expired)));
    for (name, (from, until)) in clients {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = from;
        params.not_after = until;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        let cert_path = out.join(client_cert_file(name));
        let key_path = out.join(client_key_file(name));
        write_file(&cert_path, &cert.pem(), false)?;
        write_file(&key_path, &key.serialize_pem(), true)?;
        written.clients.push((name.clone(), cert_path, key_path));
    }
    Ok(written)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes `text` to `path`; private keys readable by the owner only.
fn write_file(path: &Path, text: &str, private: bool) -> Result<(), Error> {
    let fail = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    // Replace rather than truncate in place: an old key file keeps no stale permissions.
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(path).map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> CertsArgs {
        CertsArgs {
            out: dir.to_path_buf(),
            server_names: vec!["broker.example".into(), "localhost".into()],
            clients: vec!["alice".into()],
            expired_clients: vec!["old".into()],
            days: 30,
        }
    }

    #[test]
    fn writes_every_file_as_pem() {
        let dir = tempfile::tempdir().unwrap();
        let w = generate(&args(dir.path())).unwrap();
        for (path, label) in [
            (&w.ca_cert, "CERTIFICATE"),
            (&w.server_cert, "CERTIFICATE"),
            (&w.ca_key, "PRIVATE KEY"),
            (&w.server_key, "PRIVATE KEY"),
        ] {
            let text = fs::read_to_string(path).unwrap();
            assert!(
                text.starts_with(&format!("-----BEGIN {label}-----")),
                "{}",
                path.display()
            );
        }
        assert_eq!(w.clients.len(), 2);
        assert_eq!(w.clients[0].1, dir.path().join("client-alice.pem"));
        assert_eq!(w.clients[1].2, dir.path().join("client-old-key.pem"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&w.server_key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(w.config_snippet().contains("cert_login = true"));
    }

    #[test]
    fn bad_client_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "../x", "a b", ".hidden"] {
            let mut a = args(dir.path());
            a.clients = vec![bad.into()];
            assert!(
                matches!(generate(&a), Err(Error::Invalid(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn a_second_run_replaces_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(&args(dir.path())).unwrap();
        let ca1 = fs::read_to_string(&first.ca_cert).unwrap();
        let second = generate(&args(dir.path())).unwrap();
        assert_ne!(ca1, fs::read_to_string(&second.ca_cert).unwrap());
    }
}
