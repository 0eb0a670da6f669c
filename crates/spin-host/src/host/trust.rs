//! The certificate authorities outbound database connections trust: Mozilla's roots (as
//! wasmtime-wasi-http's HTTPS) and the node's own trust store, as Spin's native TLS trusts it.
//!
//! The node's store is what OpenSSL would read (`SSL_CERT_FILE`/`SSL_CERT_DIR` when set, else
//! the distribution's bundle), so a database whose certificate a company CA signed works when
//! that CA is installed on the node, as it does under Spin. Inside a shim's sandbox the bundle
//! file is bound read-only at its own path (`wasmcell_sandbox`'s root), so both entry points
//! trust the same roots.

use std::sync::OnceLock;

use rustls::pki_types::CertificateDer;

/// The node's CA certificates that rustls can use as roots, read once per process (a few
/// milliseconds, on the first connection that asks for TLS, not at start). One it cannot use
/// is passed over, as OpenSSL passes over one it cannot parse: a client that adds roots one by
/// one (mysql_async) would otherwise fail every connection on it.
pub(crate) fn node_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!("the node's trust store: {error}");
        }
        found
            .certs
            .into_iter()
            .filter(|cert| rustls::RootCertStore::empty().add(cert.clone()).is_ok())
            .collect()
    })
}

/// Mozilla's roots and the node's, in one store.
pub(crate) fn roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    roots.add_parsable_certificates(node_roots().iter().cloned());
    roots
}
