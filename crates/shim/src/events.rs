//! Task events on their way to containerd.

use containerd_shim::event::Event;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::Events as _;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::timestamp;
use tokio::sync::mpsc;

/// Where the task service sends its events.
pub type Events = mpsc::UnboundedSender<Outgoing>;

/// An event, encoded where its type is known.
pub struct Outgoing {
    topic: String,
    event: Any,
}

impl Outgoing {
    /// The type URL is written out rather than asked of the protobuf crate: it finds a
    /// message's full name through its reflection tables, whose first use parses every
    /// containerd descriptor (comments included) into ~400 KiB that a shim then holds for its
    /// whole life (heaptrack of an idle shim). containerd's task events all live in the
    /// `containerd.events` package.
    pub fn new<E: Event + Message>(event: &E) -> Outgoing {
        Outgoing {
            topic: event.topic(),
            event: Any {
                type_url: format!("containerd.events.{}", E::NAME),
                // Encoding into a vector fails only on a missing required field, which
                // proto3 messages do not have.
                value: event.write_to_bytes().unwrap_or_default(),
                ..Default::default()
            },
        }
    }
}

/// Publishes events to containerd in the order they are sent, from one task, so a slow
/// publish never holds up a request and TaskExit never overtakes TaskStart.
pub fn forward(publisher: RemotePublisher, namespace: String) -> Events {
    let (events, mut queue) = mpsc::unbounded_channel::<Outgoing>();
    tokio::spawn(async move {
        // `forward` is the publisher's own service method; it reads nothing of the context.
        let context = TtrpcContext {
            mh: Default::default(),
            metadata: Default::default(),
            timeout_nano: 0,
        };
        while let Some(Outgoing { topic, event }) = queue.recv().await {
            let envelope = Envelope {
                timestamp: MessageField::some(timestamp().unwrap_or_default()),
                namespace: namespace.clone(),
                topic: topic.clone(),
                event: MessageField::some(event),
                ..Default::default()
            };
            let request = ForwardRequest {
                envelope: MessageField::some(envelope),
                ..Default::default()
            };
            // The publisher queues it and retries on its own; an error here means its queue is
            // full or gone.
            if let Err(error) = publisher.forward(&context, request).await {
                tracing::error!("cannot publish {topic}: {error}");
            }
        }
    });
    events
}

#[cfg(test)]
mod tests {
    use containerd_shim::protos::events::task::{
        TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
        TaskResumed, TaskStart,
    };
    use containerd_shim::protos::protobuf::MessageFull;

    use super::*;

    /// The written-out type URL is the one the reflection tables give, for every event the task
    /// service sends; containerd decodes the event by it.
    fn type_url_matches<E: Event + MessageFull + Default>() {
        let outgoing = Outgoing::new(&E::default());
        assert_eq!(outgoing.event.type_url, E::descriptor().full_name());
        assert_eq!(outgoing.topic, E::default().topic());
    }

    #[test]
    fn type_urls_are_the_events_full_names() {
        type_url_matches::<TaskCreate>();
        type_url_matches::<TaskStart>();
        type_url_matches::<TaskExit>();
        type_url_matches::<TaskDelete>();
        type_url_matches::<TaskOOM>();
        type_url_matches::<TaskExecAdded>();
        type_url_matches::<TaskExecStarted>();
        type_url_matches::<TaskPaused>();
        type_url_matches::<TaskResumed>();
    }
}
