//! The `[streaming]` table of carrackd's configuration: where the
//! exec/attach/port-forward server listens and how long its URLs live.
//!
//! ```toml
//! [streaming]
//! address = "127.0.0.1:0"   # port 0: a free port, chosen at start
//! token_ttl_seconds = 60
//! ```
//!
//! TLS is not offered: `carrack-streaming` serves plain HTTP only, so the
//! default address is loopback (kubelet on the same node reaches it).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Settings of the streaming server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingSettings {
    /// Listen address; port 0 picks a free port at start.
    pub address: SocketAddr,
    /// How long a URL returned by Exec, Attach or PortForward stays usable.
    pub token_ttl_seconds: u64,
}

impl Default for StreamingSettings {
    fn default() -> Self {
        StreamingSettings {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            token_ttl_seconds: 60,
        }
    }
}

impl StreamingSettings {
    /// Checks the values (called by [`crate::config::Config::validate`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.token_ttl_seconds == 0 || self.token_ttl_seconds > 3600 {
            return Err(ConfigError::Invalid {
                key: "streaming.token_ttl_seconds".into(),
                message: format!("expected 1 to 3600 seconds, got {}", self.token_ttl_seconds),
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
}
