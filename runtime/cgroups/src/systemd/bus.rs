//! [`Bus`]: the [`Manager`] calls over D-Bus, with zbus.
//!
//! The connection lives on a current-thread tokio runtime owned by the
//! `Bus` and dropped with it: while a `Bus` exists, blocking helper threads
//! may come and go, and dropping it joins them, so a process that drops its
//! `Bus` before it forks is single-threaded again (the OCI runtime forks
//! only before it connects, but carrackd's pod infra forks after).
//!
//! systemd is reached on the system bus, as runc and crun reach it. Not on
//! its private socket (`/run/systemd/private`): systemd names itself
//! `org.freedesktop.systemd1` as the sender on such a direct connection,
//! where zbus takes only a unique name (`:1.5`) and panics reading the
//! message (zbus 5.19 against systemd 252). A job (start, stop) is waited
//! for through the manager's `JobRemoved` signal, subscribed to before the
//! call so that a job that ends before its reply arrives is not missed.

use std::time::Duration;

use futures::StreamExt;
use zbus::zvariant::{self, OwnedObjectPath};

use super::properties::{Property, Value};
use super::{BusError, Manager};

const DESTINATION: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
/// How long one call or one job may take before the driver gives up (a
/// scope starts at once; systemd stops a scope within its own 90 s
/// TimeoutStopSec).
const TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to systemd's manager.
pub struct Bus {
    // Declared (so dropped) before the runtime it runs on.
    conn: Option<zbus::Connection>,
    rt: tokio::runtime::Runtime,
    /// Subscribe was called on this connection.
    subscribed: bool,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").finish_non_exhaustive()
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, BusError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BusError::Other(format!("starting the D-Bus client: {e}")))
}

fn other(what: &str) -> impl FnOnce(zbus::Error) -> BusError + '_ {
    move |e| BusError::Other(format!("{what}: {e}"))
}

impl Bus {
    /// Connects to systemd over the system bus.
    pub fn connect() -> Result<Bus, BusError> {
        let rt = runtime()?;
        let conn = rt.block_on(async {
            zbus::connection::Builder::system()
                .map_err(other("connecting to the system bus"))?
                .method_timeout(TIMEOUT)
                .build()
                .await
                .map_err(other(
                    "connecting to systemd over the system bus (is systemd PID 1, with D-Bus?)",
                ))
        })?;
        Ok(Bus {
            conn: Some(conn),
            rt,
            subscribed: false,
        })
    }

    /// A peer-to-peer connection over `stream` (tests: a fake manager on
    /// the other end).
    #[cfg(test)]
    pub(crate) fn over(stream: std::os::unix::net::UnixStream) -> Result<Bus, BusError> {
        let rt = runtime()?;
        let conn = rt.block_on(async {
            stream
                .set_nonblocking(true)
                .map_err(|e| BusError::Other(e.to_string()))?;
            let stream = tokio::net::UnixStream::from_std(stream)
                .map_err(|e| BusError::Other(e.to_string()))?;
            zbus::connection::Builder::unix_stream(stream)
                .p2p()
                .build()
                .await
                .map_err(other("connecting"))
        })?;
        Ok(Bus {
            conn: Some(conn),
            rt,
            subscribed: false,
        })
    }

    fn conn(&self) -> &zbus::Connection {
        self.conn.as_ref().expect("present until drop")
    }

    /// Calls a method of the manager object and returns its reply.
    fn call<B>(&self, interface: &str, method: &str, body: &B) -> Result<zbus::Message, BusError>
    where
        B: serde::Serialize + zvariant::DynamicType,
    {
        let conn = self.conn();
        self.rt.block_on(async {
            conn.call_method(Some(DESTINATION), PATH, Some(interface), method, body)
                .await
                .map_err(|e| classify(method, e))
        })
    }

    /// Calls a manager method that returns a job and waits for the job to
    /// end; Ok when it ended `done`.
    fn call_job<B>(&mut self, method: &str, body: &B) -> Result<(), BusError>
    where
        B: serde::Serialize + zvariant::DynamicType,
    {
        if !self.subscribed {
            // systemd sends its job signals to subscribed clients.
            self.call(MANAGER, "Subscribe", &())?;
            self.subscribed = true;
        }
        let conn = self.conn();
        self.rt.block_on(async {
            let rule = zbus::MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .sender(DESTINATION)
                .and_then(|b| b.path(PATH))
                .and_then(|b| b.interface(MANAGER))
                .and_then(|b| b.member("JobRemoved"))
                .map_err(other("the JobRemoved match rule"))?
                .build();
            let mut removed = zbus::MessageStream::for_match_rule(rule, conn, None)
                .await
                .map_err(other("subscribing to JobRemoved"))?;
            let reply = conn
                .call_method(Some(DESTINATION), PATH, Some(MANAGER), method, body)
                .await
                .map_err(|e| classify(method, e))?;
            let job: OwnedObjectPath = reply
                .body()
                .deserialize()
                .map_err(other("the job path of the reply"))?;
            let wait = async {
                while let Some(Ok(signal)) = removed.next().await {
                    let Ok((_, path, unit, result)) =
                        signal
                            .body()
                            .deserialize::<(u32, OwnedObjectPath, String, String)>()
                    else {
                        continue;
                    };
                    if path == job {
                        return if result == "done" {
                            Ok(())
                        } else {
                            Err(BusError::Other(format!(
                                "{method}: the job for {unit} ended {result:?}"
                            )))
                        };
                    }
                }
                Err(BusError::Other(format!(
                    "{method}: the connection to systemd closed before the job ended"
                )))
            };
            tokio::time::timeout(TIMEOUT, wait)
                .await
                .unwrap_or_else(|_| {
                    Err(BusError::Other(format!(
                        "{method}: the job did not end within {TIMEOUT:?}"
                    )))
                })
        })
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        // Closed inside its runtime, whose drop then joins any helper thread.
        let conn = self.conn.take();
        self.rt.block_on(async move { drop(conn) });
    }
}

/// systemd's errors the driver acts on, told apart by their D-Bus names.
fn classify(method: &str, e: zbus::Error) -> BusError {
    if let zbus::Error::MethodError(name, _, _) = &e {
        match name.as_str() {
            "org.freedesktop.systemd1.NoSuchUnit" => return BusError::NoSuchUnit,
            "org.freedesktop.systemd1.UnitExists" => return BusError::UnitExists,
            _ => {}
        }
    }
    BusError::Other(format!("{method}: {e}"))
}

/// The D-Bus form of a property list: `a(sv)`.
fn wire(props: &[Property]) -> Vec<(&str, zvariant::Value<'_>)> {
    props
        .iter()
        .map(|p| {
            let v = match &p.value {
                Value::Bool(b) => zvariant::Value::from(*b),
                Value::U64(n) => zvariant::Value::from(*n),
                Value::Str(s) => zvariant::Value::from(s.as_str()),
                Value::U32s(v) => zvariant::Value::from(v.clone()),
                Value::Bytes(v) => zvariant::Value::from(v.clone()),
                Value::Pairs(v) => zvariant::Value::from(v.clone()),
            };
            (p.name, v)
        })
        .collect()
}

/// `a(sa(sv))`, the auxiliary units of StartTransientUnit (none).
type AuxUnits<'a> = Vec<(&'a str, Vec<(&'a str, zvariant::Value<'a>)>)>;

impl Manager for Bus {
    fn version(&mut self) -> Result<u32, BusError> {
        let reply = self.call(PROPERTIES, "Get", &(MANAGER, "Version"))?;
        let v: zvariant::OwnedValue = reply
            .body()
            .deserialize()
            .map_err(other("the Version property"))?;
        let text = String::try_from(v).unwrap_or_default();
        Ok(super::parse_version(&text))
    }

    fn start_transient_unit(&mut self, name: &str, props: &[Property]) -> Result<(), BusError> {
        let aux: AuxUnits<'_> = Vec::new();
        self.call_job("StartTransientUnit", &(name, "replace", wire(props), aux))
    }

    fn stop_unit(&mut self, name: &str) -> Result<(), BusError> {
        self.call_job("StopUnit", &(name, "replace"))
    }

    fn reset_failed_unit(&mut self, name: &str) -> Result<(), BusError> {
        self.call(MANAGER, "ResetFailedUnit", &(name,)).map(drop)
    }

    fn set_unit_properties(&mut self, name: &str, props: &[Property]) -> Result<(), BusError> {
        self.call(MANAGER, "SetUnitProperties", &(name, true, wire(props)))
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::{ScopeUnit, start_scope, stop_scope, update_scope};
    use std::os::unix::net::UnixStream;
    use zbus::zvariant::{ObjectPath, OwnedValue};

    /// One method call the fake manager received: member, body signature,
    /// the message.
    type Call = (String, String, zbus::Message);

    /// StartTransientUnit's arguments: name, mode, properties, aux units.
    type StartBody = (
        String,
        String,
        Vec<(String, OwnedValue)>,
        Vec<(String, Vec<(String, OwnedValue)>)>,
    );

    /// A fake systemd manager on the server end of a peer-to-peer
    /// connection: answers Version, runs every job at once (announcing
    /// JobRemoved *before* the method reply, the race a client must
    /// survive), knows the units it started. Returns what it was asked once
    /// the client hangs up.
    fn fake_manager(stream: UnixStream) -> std::thread::JoinHandle<Vec<Call>> {
        std::thread::spawn(move || {
            let rt = runtime().unwrap();
            rt.block_on(async move {
                stream.set_nonblocking(true).unwrap();
                let stream = tokio::net::UnixStream::from_std(stream).unwrap();
                let conn = zbus::connection::Builder::unix_stream(stream)
                    .server(zbus::Guid::generate())
                    .unwrap()
                    .p2p()
                    .build()
                    .await
                    .unwrap();
                let mut incoming = zbus::MessageStream::from(&conn);
                let mut calls = Vec::new();
                let mut units: Vec<String> = Vec::new();
                let mut jobs = 0u32;
                while let Some(Ok(msg)) = incoming.next().await {
                    let hdr = msg.header();
                    if hdr.message_type() != zbus::message::Type::MethodCall {
                        continue;
                    }
                    let member = hdr.member().unwrap().to_string();
                    let signature = msg.body().signature().to_string_no_parens();
                    calls.push((member.clone(), signature, msg.clone()));
                    match member.as_str() {
                        "Get" => conn
                            .reply(&hdr, &zvariant::Value::from("252.19-1~deb12u1"))
                            .await
                            .unwrap(),
                        "StartTransientUnit" | "StopUnit" => {
                            let name = if member == "StopUnit" {
                                msg.body().deserialize::<(String, String)>().unwrap().0
                            } else {
                                msg.body().deserialize::<StartBody>().unwrap().0
                            };
                            if member == "StopUnit" && !units.contains(&name) {
                                conn.reply_error(
                                    &hdr,
                                    "org.freedesktop.systemd1.NoSuchUnit",
                                    &format!("Unit {name} not loaded."),
                                )
                                .await
                                .unwrap();
                                continue;
                            }
                            if member == "StartTransientUnit" {
                                units.push(name.clone());
                            } else {
                                units.retain(|u| *u != name);
                            }
                            jobs += 1;
                            let job = format!("/org/freedesktop/systemd1/job/{jobs}");
                            let job = ObjectPath::try_from(job.as_str()).unwrap();
                            conn.emit_signal(
                                None::<&str>,
                                PATH,
                                MANAGER,
                                "JobRemoved",
                                &(jobs, &job, name.as_str(), "done"),
                            )
                            .await
                            .unwrap();
                            conn.reply(&hdr, &job).await.unwrap();
                        }
                        _ => conn.reply(&hdr, &()).await.unwrap(),
                    }
                }
                calls
            })
        })
    }

    fn unified() -> crate::Hierarchy {
        crate::systemd::tests::unified()
    }

    #[test]
    fn scope_lifecycle_on_the_wire() {
        let (client, server) = UnixStream::pair().unwrap();
        let manager = fake_manager(server);
        let unit = ScopeUnit::parse("kubepods-pod1.slice:cri-carrack:c1", "c1").unwrap();
        let r: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 268435456},
            "cpu": {"cpus": "0-1"},
            "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]
        }))
        .unwrap();
        let mut bus = Bus::over(client).unwrap();
        start_scope(&mut bus, &unit, 4242, &r, &unified()).unwrap();
        update_scope(&mut bus, &unit, &r, &unified()).unwrap();
        stop_scope(&mut bus, &unit).unwrap();
        // Gone now: NoSuchUnit from StopUnit is success for stop.
        stop_scope(&mut bus, &unit).unwrap();
        drop(bus);
        let calls = manager.join().unwrap();
        let summary: Vec<(&str, &str)> = calls
            .iter()
            .map(|(m, s, _)| (m.as_str(), s.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("Get", "ss"),
                ("Subscribe", ""),
                ("StartTransientUnit", "ssa(sv)a(sa(sv))"),
                ("Get", "ss"),
                ("SetUnitProperties", "sba(sv)"),
                ("StopUnit", "ss"),
                ("ResetFailedUnit", "s"),
                ("StopUnit", "ss"),
                ("ResetFailedUnit", "s"),
            ]
        );
        let (name, mode, props, aux): StartBody = calls[2].2.body().deserialize().unwrap();
        assert_eq!(
            (name.as_str(), mode.as_str()),
            ("cri-carrack-c1.scope", "replace")
        );
        assert!(aux.is_empty());
        let typed: Vec<(String, String)> = props
            .iter()
            .map(|(k, v)| (k.clone(), v.value_signature().to_string()))
            .collect();
        for (k, sig) in [
            ("Slice", "s"),
            ("PIDs", "au"),
            ("Delegate", "b"),
            ("MemoryMax", "t"),
            ("AllowedCPUs", "ay"),
            ("DevicePolicy", "s"),
            ("DeviceAllow", "a(ss)"),
        ] {
            assert!(
                typed.contains(&(k.to_owned(), sig.to_owned())),
                "{k} as {sig}: {typed:?}"
            );
        }
        let value = |k: &str| {
            props
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.try_clone().unwrap())
                .unwrap()
        };
        assert_eq!(Vec::<u32>::try_from(value("PIDs")).unwrap(), [4242]);
        assert_eq!(Vec::<u8>::try_from(value("AllowedCPUs")).unwrap(), [0b11]);
        assert_eq!(
            Vec::<(String, String)>::try_from(value("DeviceAllow")).unwrap(),
            [("/dev/char/1:3".to_owned(), "rwm".to_owned())]
        );
    }

    #[test]
    fn systemd_errors_are_told_apart() {
        let err = |name: &str| {
            let msg = zbus::Message::method_call("/", "X")
                .unwrap()
                .build(&())
                .unwrap();
            let hdr = msg.header();
            let e = zbus::Message::error(&hdr, name)
                .unwrap()
                .build(&("why",))
                .unwrap();
            zbus::Error::from(e)
        };
        assert_eq!(
            classify("StopUnit", err("org.freedesktop.systemd1.NoSuchUnit")),
            BusError::NoSuchUnit
        );
        assert_eq!(
            classify(
                "StartTransientUnit",
                err("org.freedesktop.systemd1.UnitExists")
            ),
            BusError::UnitExists
        );
        let BusError::Other(text) = classify(
            "StartTransientUnit",
            err("org.freedesktop.DBus.Error.AccessDenied"),
        ) else {
            panic!()
        };
        assert!(text.starts_with("StartTransientUnit"), "{text}");
    }
}
