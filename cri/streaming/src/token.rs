//! Single-use, expiring tokens that carry a pending request from the CRI
//! call to the client's connection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{AttachSpec, ExecSpec, PortForwardSpec};

/// A request waiting for its client.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Exec(ExecSpec),
    Attach(AttachSpec),
    PortForward(PortForwardSpec),
}

pub(crate) struct Tokens {
    ttl: Duration,
    map: Mutex<HashMap<String, (Pending, Instant)>>,
}

impl Tokens {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `p` under a fresh 128-bit random token.
    pub(crate) fn insert(&self, p: Pending) -> String {
        let token = hex::encode(rand::random::<[u8; 16]>());
        let now = Instant::now();
        let mut map = self.map.lock().unwrap();
        map.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
        map.insert(token.clone(), (p, now));
        token
    }

    /// Takes the request for `token`: `None` when unknown, used or expired.
    pub(crate) fn take(&self, token: &str) -> Option<Pending> {
        let (p, at) = self.map.lock().unwrap().remove(token)?;
        (at.elapsed() < self.ttl).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Pending {
        Pending::PortForward(PortForwardSpec {
            pod_sandbox_id: "s".into(),
            ports: vec![],
        })
    }

    #[test]
    fn single_use() {
        let t = Tokens::new(Duration::from_secs(60));
        let a = t.insert(pf());
        let b = t.insert(pf());
        assert_ne!(a, b);
        assert!(t.take(&a).is_some());
        assert!(t.take(&a).is_none());
        assert!(t.take(&b).is_some());
        assert!(t.take("nope").is_none());
    }

    #[test]
    fn expires() {
        let t = Tokens::new(Duration::from_millis(1));
        let a = t.insert(pf());
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.take(&a).is_none());
    }
}
