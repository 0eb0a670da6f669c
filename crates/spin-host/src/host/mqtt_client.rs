//! Outbound MQTT (`fermyon:spin/mqtt@2.0.0`) with rumqttc: a connection to a broker the
//! component's `allowed_outbound_hosts` grants (`mqtt://HOST:PORT`), opened by `open` (so a
//! broker that cannot be reached fails there, with `connection-failed`), and messages
//! published on it, each call returning once the broker has what its QoS asks for (sent for
//! at-most-once, acknowledged for at-least-once, completed for exactly-once).
//!
//! The address is Spin's: `mqtt://HOST:PORT?client_id=ID` (a client id is required, as Spin
//! requires it), with `keep_alive_secs` and `clean_session` as rumqttc reads them. Plain TCP
//! only: an `mqtts://` address is refused as invalid.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS};
use tokio::sync::Mutex;
use wasmtime::component::Resource;

use super::fermyon::spin2_0_0::mqtt;
use super::services::{MQTT, host_and_port, no_network, permitted};
use super::{SpinHost, SpinState};
use crate::host::Outcome;

/// How long connecting and one publish may take: a broker that does not answer fails the call
/// rather than holding the guest until the request's deadline.
const WAIT: Duration = Duration::from_secs(30);

/// Messages a connection queues for the broker before `publish` waits.
const QUEUE: usize = 10;

/// An open connection: the client that queues messages, and the event loop that sends them,
/// polled by whoever publishes (a connection is one guest's, its calls one at a time).
#[derive(Clone)]
pub struct MqttHandle(Arc<Connection>);

struct Connection {
    client: AsyncClient,
    events: Mutex<EventLoop>,
}

impl Connection {
    /// Polls the event loop until `done` says an event completes what was asked, within
    /// [`WAIT`].
    async fn until(&self, done: impl Fn(&Event) -> bool) -> Result<(), String> {
        let mut events = self.events.lock().await;
        let polled = tokio::time::timeout(WAIT, async {
            loop {
                match events.poll().await {
                    Ok(event) if done(&event) => return Ok(()),
                    Ok(_) => {}
                    Err(error) => return Err(error.to_string()),
                }
            }
        });
        polled
            .await
            .unwrap_or_else(|_| Err(format!("the broker did not answer within {WAIT:?}")))
    }
}

impl mqtt::Host for SpinState {}

/// Connects to the broker at `address` for the component `host` (`unreachable`: why the
/// workload cannot connect at all, if it cannot): `open` of every version.
pub(super) async fn connect(
    host: &SpinHost,
    unreachable: Option<String>,
    address: String,
    username: String,
    password: String,
    keep_alive_interval_in_secs: u64,
) -> Result<MqttHandle, mqtt::Error> {
    if host_and_port(&address, MQTT).is_none() {
        return Err(mqtt::Error::InvalidAddress);
    }
    if let Some(why) = unreachable {
        return Err(mqtt::Error::ConnectionFailed(why));
    }
    permitted(host, &address, MQTT).map_err(mqtt::Error::ConnectionFailed)?;
    let Ok(mut options) = MqttOptions::parse_url(address.as_str()) else {
        return Err(mqtt::Error::InvalidAddress);
    };
    if !username.is_empty() {
        options.set_credentials(username, password);
    }
    // MQTT's keep-alive is 16 bits of seconds.
    let keep_alive = keep_alive_interval_in_secs.min(u64::from(u16::MAX));
    options.set_keep_alive(Duration::from_secs(keep_alive));
    let (client, events) = AsyncClient::new(options, QUEUE);
    let connection = Connection {
        client,
        events: Mutex::new(events),
    };
    connection
        .until(|event| matches!(event, Event::Incoming(Incoming::ConnAck(_))))
        .await
        .map_err(|why| {
            mqtt::Error::ConnectionFailed(format!("cannot connect to {address}: {why}"))
        })?;
    Ok(MqttHandle(Arc::new(connection)))
}

impl MqttHandle {
    /// Publishes `payload` to `topic`; returns once the broker has it as `qos` asks (sent,
    /// acknowledged or completed).
    pub(super) async fn publish(
        &self,
        topic: String,
        payload: mqtt::Payload,
        qos: mqtt::Qos,
    ) -> Result<(), mqtt::Error> {
        let connection = &self.0;
        let qos = match qos {
            mqtt::Qos::AtMostOnce => QoS::AtMostOnce,
            mqtt::Qos::AtLeastOnce => QoS::AtLeastOnce,
            mqtt::Qos::ExactlyOnce => QoS::ExactlyOnce,
        };
        if let Err(error) = connection.client.try_publish(topic, qos, false, payload) {
            return Err(mqtt::Error::Other(error.to_string()));
        }
        connection
            .until(|event| {
                matches!(
                    (qos, event),
                    (QoS::AtMostOnce, Event::Outgoing(Outgoing::Publish(_)))
                        | (QoS::AtLeastOnce, Event::Incoming(Incoming::PubAck(_)))
                        | (QoS::ExactlyOnce, Event::Incoming(Incoming::PubComp(_)))
                )
            })
            .await
            .map_err(mqtt::Error::ConnectionFailed)
    }
}

impl mqtt::HostConnection for SpinState {
    async fn open(
        &mut self,
        address: String,
        username: String,
        password: String,
        keep_alive_interval_in_secs: u64,
    ) -> Outcome<Resource<MqttHandle>, mqtt::Error> {
        let host = self.host.clone();
        let unreachable = no_network(self);
        let connected = connect(
            &host,
            unreachable,
            address,
            username,
            password,
            keep_alive_interval_in_secs,
        )
        .await;
        Ok(match connected {
            Ok(handle) => Ok(self.table.push(handle)?),
            Err(error) => Err(error),
        })
    }

    async fn publish(
        &mut self,
        this: Resource<MqttHandle>,
        topic: String,
        payload: mqtt::Payload,
        qos: mqtt::Qos,
    ) -> Outcome<(), mqtt::Error> {
        let handle = self.table.get(&this)?.clone();
        Ok(handle.publish(topic, payload, qos).await)
    }

    async fn drop(&mut self, this: Resource<MqttHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::tests::{spin_host, spin_state};
    use mqtt::HostConnection;

    /// Spin's conformance suite: a denied address is named as the component gave it; one that
    /// is not an address is invalid; a granted broker that is not there fails `open`.
    #[tokio::test]
    async fn an_mqtt_address_is_checked_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr");
        let output = wasmcell_workload::Output::File(log.clone());
        // Nothing listens on port 1 of loopback.
        let host = spin_host(dir.path(), &["mqtt://127.0.0.1:1"], &[], &[], &output);
        let mut state = spin_state(host);
        let denied = "mqtt://localhost:1883?client_id=spintest";
        async fn open(
            state: &mut SpinState,
            address: &str,
        ) -> Result<Resource<MqttHandle>, mqtt::Error> {
            HostConnection::open(state, address.into(), "u".into(), "pw".into(), 30)
                .await
                .unwrap()
        }
        let Err(mqtt::Error::ConnectionFailed(why)) = open(&mut state, denied).await else {
            panic!("{denied} was not refused");
        };
        assert_eq!(why, format!("address {denied} is not permitted"));
        let invalid = open(&mut state, "not an address").await;
        assert!(matches!(invalid, Err(mqtt::Error::InvalidAddress)));
        // Granted, but no client id: Spin requires one.
        let no_id = open(&mut state, "mqtt://127.0.0.1:1").await;
        assert!(matches!(no_id, Err(mqtt::Error::InvalidAddress)));
        let absent = open(&mut state, "mqtt://127.0.0.1:1?client_id=t").await;
        let Err(mqtt::Error::ConnectionFailed(why)) = absent else {
            panic!("a broker that is not there was connected");
        };
        assert!(
            why.starts_with("cannot connect to mqtt://127.0.0.1:1"),
            "{why}"
        );
        state.host.diagnostics_flushed().await;
        let reported = std::fs::read_to_string(&log).unwrap();
        assert!(
            reported.contains("add \"mqtt://localhost:1883\""),
            "{reported}"
        );
    }
}
