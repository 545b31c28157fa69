//! The `[streaming]` table of carrackd's configuration: where the
//! exec/attach/port-forward server listens and how long its URLs live.
//!
//! ```toml
//! [streaming]
//! address = "127.0.0.1:0"   # port 0: a free port, chosen at start
//! token_ttl_seconds = 60
//! ```
//!
//! With `tls_cert_file` and `tls_key_file` (PEM) the server speaks HTTPS
//! and its URLs are `https://`; without them it serves plain HTTP, which is
//! why the default address is loopback (kubelet on the same node reaches
//! it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Settings of the streaming server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingSettings {
    /// Listen address; port 0 picks a free port at start.
    pub address: SocketAddr,
    /// How long a URL returned by Exec, Attach or PortForward stays usable.
    pub token_ttl_seconds: u64,
    /// The server's certificate chain (PEM); with `tls_key_file`, HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for StreamingSettings {
    fn default() -> Self {
        StreamingSettings {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            token_ttl_seconds: 60,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl StreamingSettings {
    /// Checks the values (called by [`super::Config::validate`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.token_ttl_seconds == 0 || self.token_ttl_seconds > 3600 {
            return Err(ConfigError::Invalid {
                key: "streaming.token_ttl_seconds".into(),
                message: format!("expected 1 to 3600 seconds, got {}", self.token_ttl_seconds),
            });
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            let missing = if self.tls_cert_file.is_none() {
                "streaming.tls_cert_file"
            } else {
                "streaming.tls_key_file"
            };
            return Err(ConfigError::Invalid {
                key: missing.into(),
                message: "TLS needs both tls_cert_file and tls_key_file".into(),
            });
        }
        if self.address.ip().is_unspecified() {
            // The URL handed to clients names this address: 0.0.0.0 or ::
            // would give them an address they cannot dial.
            return Err(ConfigError::Invalid {
                key: "streaming.address".into(),
                message: format!(
                    "{} is unspecified: name the node address clients reach (URLs carry it)",
                    self.address
                ),
            });
        }
        Ok(())
    }

    /// The server configuration of `carrack-streaming`.
    pub fn server_config(&self) -> carrack_streaming::StreamingConfig {
        carrack_streaming::StreamingConfig {
            addr: self.address,
            token_ttl: Duration::from_secs(self.token_ttl_seconds),
            tls: self
                .tls_cert_file
                .clone()
                .zip(self.tls_key_file.clone())
                .map(|(cert, key)| carrack_streaming::tls::TlsFiles { cert, key }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    #[test]
    fn default_is_loopback_free_port_one_minute() {
        let c = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(c.streaming.address.to_string(), "127.0.0.1:0");
        assert_eq!(c.streaming.token_ttl_seconds, 60);
    }

    #[test]
    fn table_overrides_and_bad_values_are_named() {
        let c = Config::parse(
            "[streaming]\naddress = \"127.0.0.2:10010\"\ntoken_ttl_seconds = 30\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.streaming.address.to_string(), "127.0.0.2:10010");
        assert_eq!(
            c.streaming.server_config().token_ttl,
            std::time::Duration::from_secs(30)
        );
        let e = Config::parse("[streaming]\ntoken_ttl_seconds = 0\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("streaming.token_ttl_seconds"), "{e}");
        let e =
            Config::parse("[streaming]\naddress = \"0.0.0.0:1\"\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("streaming.address"), "{e}");
        let e = Config::parse("[streaming]\naddress = \"nope\"\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("address"), "{e}");
    }

    #[test]
    fn tls_needs_both_files_and_reaches_the_server_config() {
        assert!(Config::default().streaming.server_config().tls.is_none());
        let c = Config::parse(
            "[streaming]\ntls_cert_file = \"/c.pem\"\ntls_key_file = \"/k.pem\"\n",
            Path::new("x"),
        )
        .unwrap();
        let tls = c.streaming.server_config().tls.unwrap();
        assert_eq!(tls.cert, Path::new("/c.pem"));
        assert_eq!(tls.key, Path::new("/k.pem"));
        let e =
            Config::parse("[streaming]\ntls_cert_file = \"/c.pem\"\n", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("streaming.tls_key_file"), "{e}");
    }
}
