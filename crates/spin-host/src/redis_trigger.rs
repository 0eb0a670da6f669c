//! Spin's Redis trigger: each message published on a subscribed channel runs the trigger's
//! component (`fermyon:spin/inbound-redis`, or Spin 4's `spin:redis/inbound-redis@3.0.0`) in
//! a fresh instance, one message at a time per channel, as Spin does. A failing handler is reported on stderr and the next message runs.

use std::sync::Arc;
use std::time::Duration;

use crate::host::SpinState;
use crate::{SpinApp, spin_state};
use futures_util::StreamExt;
use redis::{ProtocolVersion, Value};
use wasmcell_runtime::controls::Controls;
use wasmcell_runtime::error::Error;
use wasmcell_runtime::stdio::{self, Outputs};
use wasmcell_runtime::store::{Budget, new_store};
use wasmcell_workload::WorkloadSpec;

wasmtime::component::bindgen!({
    path: "wit/spin",
    world: "fermyon:spin/redis-trigger",
    exports: { default: async },
});

/// Spin 4's trigger export, `spin:redis/inbound-redis@3.0.0`, whose `handle-message` is async.
mod spin4 {
    wasmtime::component::bindgen!({
        path: "wit/spin",
        world: "fermyon:spin/redis-trigger3@2.0.0",
        exports: { default: async | store },
    });
}

/// What a component's Redis trigger calls: Spin 2's and 3's `fermyon:spin/inbound-redis`, or
/// Spin 4's `spin:redis/inbound-redis@3.0.0`.
pub(crate) enum RedisExport {
    Spin2(RedisTriggerPre<SpinState>),
    Spin4(spin4::RedisTrigger3Pre<SpinState>),
}

impl RedisExport {
    /// The component's trigger export, if it has one.
    pub(crate) fn new(pre: wasmtime::component::InstancePre<SpinState>) -> Option<RedisExport> {
        match RedisTriggerPre::new(pre.clone()) {
            Ok(spin2) => Some(RedisExport::Spin2(spin2)),
            Err(_) => spin4::RedisTrigger3Pre::new(pre)
                .ok()
                .map(RedisExport::Spin4),
        }
    }

    /// Instantiates the component in `store` and hands it `payload`: what its handler
    /// answered, its error as it gave it.
    async fn run(
        &self,
        store: &mut wasmtime::Store<SpinState>,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            RedisExport::Spin2(pre) => {
                let trigger = pre.instantiate_async(&mut *store).await?;
                let handled = trigger
                    .fermyon_spin_inbound_redis()
                    .call_handle_message(&mut *store, &payload)
                    .await?;
                Ok(handled.map_err(|error| format!("{error:?}")))
            }
            RedisExport::Spin4(pre) => {
                let trigger = pre.instantiate_async(&mut *store).await?;
                let handled = store
                    .run_concurrent(async move |accessor| {
                        trigger
                            .spin_redis_inbound_redis()
                            .call_handle_message(accessor, payload)
                            .await
                    })
                    .await??;
                Ok(handled.map_err(|error| format!("{error:?}")))
            }
        }
    }
}

/// Subscribes to every Redis trigger's channel and runs its component per message, until
/// terminated. A server that cannot be reached at the start fails the run, as in Spin: the app
/// cannot do its work, and its orchestrator restarts it. A subscription lost later (the server
/// restarted, or closed the connection: `CLIENT KILL`, a slow subscriber past its
/// `client-output-buffer-limit`) is made again, with [`Backoff`], for as long as the app runs;
/// messages published meanwhile are lost, as Redis pub/sub delivers only to subscribers
/// connected when a message is published. Returns only when terminated.
pub(crate) async fn listen(
    app: &SpinApp,
    spec: &Arc<WorkloadSpec>,
    controls: &Controls,
) -> Result<(), Error> {
    let outputs = Arc::new(Outputs::open(&spec.stdio).await?);
    let mut subscriptions = Vec::new();
    for trigger in &app.app.redis {
        let client = wasmcell_stores::redis_client(&trigger.address)
            .map_err(|e| Error::App(format!("Redis trigger: {e}")))?;
        let subscription = Subscription {
            server: client.get_connection_info().addr.to_string(),
            client,
            channel: &trigger.channel,
        };
        let pubsub = subscription.subscribe().await.map_err(Error::App)?;
        tracing::debug!(channel = %trigger.channel, server = %subscription.server, "subscribed");
        subscriptions.push((trigger.component, subscription, pubsub));
    }
    let runs = subscriptions
        .into_iter()
        .map(|(component, subscription, pubsub)| {
            let outputs = outputs.clone();
            async move {
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = tokio::select! {
                        message = messages.next() => message,
                        () = controls.terminated() => return,
                    };
                    let Some(message) = message else {
                        match subscription.resubscribe(spec, controls).await {
                            Some(pubsub) => messages = pubsub.into_on_message(),
                            None => return,
                        }
                        continue;
                    };
                    let payload = message.get_payload_bytes().to_vec();
                    if let Err(why) =
                        handle(app, component, spec, controls, &outputs, payload).await
                    {
                        let id = &app.app.components[component].id;
                        let channel = message.get_channel_name();
                        stdio::report(
                            &spec.stdio.stderr,
                            &format!("component {id}: message on {channel}: {why}"),
                        )
                        .await;
                    }
                }
            }
        });
    futures_util::future::join_all(runs).await;
    Ok(())
}

/// One trigger's subscription to its channel.
struct Subscription<'a> {
    client: redis::Client,
    /// `HOST:PORT`, for messages: the trigger's address may hold a password.
    server: String,
    channel: &'a str,
}

impl Subscription<'_> {
    async fn subscribe(&self) -> Result<redis::aio::PubSub, String> {
        let (server, channel) = (&self.server, self.channel);
        let mut pubsub = self.client.get_async_pubsub().await.map_err(|e| {
            format!("cannot connect to Redis at {server} for channel {channel}: {e}")
        })?;
        let refused = |why: &dyn std::fmt::Display| {
            format!("cannot subscribe to {channel} on Redis at {server}: {why}")
        };
        pubsub.subscribe(channel).await.map_err(|e| refused(&e))?;
        // redis-rs's `subscribe` drops the server's reply, so a refusal (`NOAUTH`: the server
        // wants a password it no longer gets; `NOPERM`: its ACL denies the channel) passes for
        // a subscription that would never deliver a message. A PING tells: over RESP2, only a
        // subscribed connection answers it `["pong", ""]`; over RESP3, where any connection
        // answers `PONG`, a refusal still fails it.
        let resp3 = self.client.get_connection_info().redis.protocol == ProtocolVersion::RESP3;
        match pubsub.ping().await.and_then(Value::extract_error) {
            Ok(Value::Array(reply)) if matches!(reply.first(), Some(Value::BulkString(kind)) if kind == b"pong") => {
                Ok(pubsub)
            }
            Ok(_) if resp3 => Ok(pubsub),
            Ok(reply) => Err(refused(&format!("the server answered PING with {reply:?}"))),
            Err(error) => Err(refused(&error)),
        }
    }

    /// Subscribes again after the subscription was lost, waiting longer after each failure,
    /// until it succeeds or the app is terminated (`None`). Says on the container's stderr that
    /// it was lost, why the first attempt failed, and when it is back.
    async fn resubscribe(
        &self,
        spec: &WorkloadSpec,
        controls: &Controls,
    ) -> Option<redis::aio::PubSub> {
        let stderr = &spec.stdio.stderr;
        let (server, channel) = (&self.server, self.channel);
        let lost = std::time::Instant::now();
        stdio::report(
            stderr,
            &format!(
                "Redis trigger: lost the subscription to {channel} on {server}; subscribing again"
            ),
        )
        .await;
        let (mut backoff, mut attempt) = (Backoff::default(), 0u64);
        loop {
            attempt += 1;
            let attempted = async {
                tokio::time::sleep(backoff.next_wait()).await;
                self.subscribe().await
            };
            let subscribed = tokio::select! {
                subscribed = attempted => subscribed,
                () = controls.terminated() => return None,
            };
            match subscribed {
                Ok(pubsub) => {
                    let after = lost.elapsed().as_secs_f64();
                    let message = format!(
                        "Redis trigger: subscribed to {channel} on {server} again, after {after:.1} s and {attempt} attempt(s)"
                    );
                    stdio::report(stderr, &message).await;
                    return Some(pubsub);
                }
                Err(why) if attempt == 1 => {
                    let message = format!(
                        "Redis trigger: {why}; retrying, at least every {} s",
                        Backoff::MAX.as_secs()
                    );
                    stdio::report(stderr, &message).await;
                }
                Err(_) => {}
            }
        }
    }
}

/// How long to wait before each attempt to subscribe again: 100 ms, doubling up to 5 s. The
/// first attempt comes soon enough that a killed connection is back before most publishers
/// notice; the cap keeps a server that is down for a while from being called more than
/// every 5 s by every subscriber.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(Backoff::MAX);
        wait
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            next: Backoff::FIRST,
        }
    }
}

async fn handle(
    app: &SpinApp,
    index: usize,
    spec: &WorkloadSpec,
    controls: &Controls,
    outputs: &Outputs,
    payload: Vec<u8>,
) -> Result<(), String> {
    let component = app.component(index);
    let base = component.host.wasi_base(spec.network);
    let wasi = component.start.wasi(base, component.host.outputs(outputs));
    let clock = app.http.ticker().store_clock().map_err(|e| e.to_string())?;
    let budget = Budget::new(controls, clock);
    let state = spin_state(component.host, wasi, spec.network, budget, None);
    let mut store = new_store(app.http.engine(), state, controls);
    let Some(export) = component.redis else {
        return Err("the component has no Redis trigger export".to_owned());
    };
    let run = export.run(&mut store, payload);
    match tokio::time::timeout(spec.http.timeout, run).await {
        Err(_) => Err(format!(
            "the handler did not finish within {:?}",
            spec.http.timeout
        )),
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(error))) => Err(format!("the handler returned an error: {error}")),
        Ok(Err(_)) if store.data().budget.limiter.exceeded() => {
            Err("the handler exceeded its memory limit".to_owned())
        }
        Ok(Err(error)) => Err(format!("the handler failed: {error:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resubscribing_waits_100_ms_doubling_to_5_s() {
        let mut backoff = Backoff::default();
        let waits: Vec<u128> = (0..9).map(|_| backoff.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }
}
