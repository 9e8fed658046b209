//! A throwaway certificate authority for `bench --tls`: made at start with rcgen, its
//! certificate written to a PEM file the service trusts through `extra_ca_certs`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA's PEM file and the receiver's TLS configuration (leaf for 127.0.0.1 and localhost).
pub struct Pki {
    pub ca_pem_path: PathBuf,
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl Pki {
    /// Makes the CA and a leaf it signs, and writes the CA certificate into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "kamiyo-webhooks bench CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).context("self-signing the CA")?;

        let leaf_key = KeyPair::generate().context("generating the receiver's key")?;
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
        leaf.subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let leaf_cert = leaf
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .context("signing the receiver's certificate")?;

        let ca_pem = ca_cert.pem();
        let ca_pem_path = dir.join("bench-ca.pem");
        std::fs::write(&ca_pem_path, &ca_pem)
            .with_context(|| format!("writing {}", ca_pem_path.display()))?;

        let chain: Vec<CertificateDer<'static>> =
            vec![leaf_cert.der().clone(), ca_cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the receiver's certificate")?;
        // HTTP/1.1 only: the receiver is an HTTP/1.1 keep-alive server.
        server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Pki {
            ca_pem_path,
            ca_pem,
            server_config: Arc::new(server_config),
        })
    }
}
