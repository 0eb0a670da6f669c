//! Spin's Redis trigger: each message published on a subscribed channel runs the trigger's
//! component (`fermyon:spin/inbound-redis`) in a fresh instance, one message at a time per
//! channel, as Spin does. A failing handler is reported on stderr and the next message runs.

use std::sync::Arc;

use futures_util::StreamExt;
use wasmtime::component::ResourceTable;
use wasmtime_wasi_http::WasiHttpCtx;

use super::SpinApp;
use crate::controls::Controls;
use crate::engine::{ComponentState, Guest, new_store};
use crate::error::Error;
use crate::http::{HttpEngine, HttpHooks};
use crate::stdio::{self, Outputs};
use wasmcell_workload::WorkloadSpec;

wasmtime::component::bindgen!({
    path: "wit/spin",
    world: "fermyon:spin/redis-trigger",
    exports: { default: async },
});

/// Subscribes to every Redis trigger's channel and runs its component per message, until
/// terminated. A server that cannot be reached fails the run: the app cannot do its work.
pub(crate) async fn listen(
    app: &Arc<SpinApp>,
    http: &HttpEngine,
    spec: &Arc<WorkloadSpec>,
    controls: &Controls,
) -> Result<(), Error> {
    let outputs = Arc::new(Outputs::open(&spec.stdio).await?);
    let mut listeners = Vec::new();
    for trigger in &app.app.redis {
        let client = wasmcell_stores::redis_client(&trigger.address)
            .map_err(|e| Error::Spin(format!("Redis trigger: {e}")))?;
        let mut pubsub = client.get_async_pubsub().await.map_err(|e| {
            Error::Spin(format!(
                "cannot connect to Redis at {} for channel {}: {e}",
                trigger.address, trigger.channel
            ))
        })?;
        pubsub
            .subscribe(&trigger.channel)
            .await
            .map_err(|e| Error::Spin(format!("cannot subscribe to {}: {e}", trigger.channel)))?;
        tracing::debug!(channel = %trigger.channel, address = %trigger.address, "subscribed");
        listeners.push((trigger.component, pubsub));
    }
    let runs = listeners.into_iter().map(|(component, pubsub)| {
        let outputs = outputs.clone();
        async move {
            let mut messages = pubsub.into_on_message();
            loop {
                let message = tokio::select! {
                    message = messages.next() => message,
                    () = controls.terminated() => return,
                };
                let Some(message) = message else {
                    stdio::report(&spec.stdio.stderr, "the Redis subscription ended").await;
                    return;
                };
                let payload = message.get_payload_bytes().to_vec();
                if let Err(why) =
                    handle(app, component, http, spec, controls, &outputs, payload).await
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

async fn handle(
    app: &SpinApp,
    index: usize,
    http: &HttpEngine,
    spec: &WorkloadSpec,
    controls: &Controls,
    outputs: &Outputs,
    payload: Vec<u8>,
) -> Result<(), String> {
    let component = app.component(index);
    let mut wasi = component.host.wasi_base(spec.network);
    wasi.envs(component.env);
    outputs.attach(&mut wasi);
    let mut wasi = wasi.build();
    *wasi.filesystem() = component.preopens.clone();
    let clock = http.ticker().store_clock().map_err(|e| e.to_string())?;
    let state = ComponentState {
        wasi,
        table: ResourceTable::new(),
        http: WasiHttpCtx::new(),
        hooks: HttpHooks::spin(spec.network, component.host.clone(), None),
        guest: Guest::new(controls, clock),
        grants: Some(crate::engine::Grants::Spin(component.host.clone())),
    };
    let mut store = new_store(http.engine(), state, controls);
    let Some(pre) = component.redis else {
        return Err("the component has no Redis trigger export".to_owned());
    };
    let run = async {
        let trigger = pre.instantiate_async(&mut store).await?;
        trigger
            .fermyon_spin_inbound_redis()
            .call_handle_message(&mut store, &payload)
            .await
    };
    match tokio::time::timeout(spec.http.timeout, run).await {
        Err(_) => Err(format!(
            "the handler did not finish within {:?}",
            spec.http.timeout
        )),
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(_))) => Err("the handler returned an error".to_owned()),
        Ok(Err(_)) if store.data().guest.limiter.exceeded() => {
            Err("the handler exceeded its memory limit".to_owned())
        }
        Ok(Err(error)) => Err(format!("the handler failed: {error:?}")),
    }
}
