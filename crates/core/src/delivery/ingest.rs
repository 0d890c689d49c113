//! Events from the host (`emitEvent`), parsed, checked and queued on the lanes' thread rather
//! than on the host's: the host's thread (Node's, which also serves the application) only hands
//! over the JSON text. One task takes them in the order they were handed over, so events keep
//! the order they were emitted in.
//!
//! Parsed and re-encoded during the call, a burst of events held Node's thread for a noticeable
//! time (docs/design.md).
//!
//! The queue is bounded in bytes by `maxBacklog`, as the lanes are: past it an event is refused
//! at once (`server-behind`, counted as `ingestFull`), so a host that hands over events faster
//! than the lanes' thread takes them learns it instead of the queue growing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use crate::delivery::hub::Hub;
use crate::error::Error;

/// For each event, the number of sockets it was queued to, or why it was refused.
pub type Outcomes = Vec<Result<usize, Error>>;

/// What was handed over: one event, or a JSON array of events (those emitted together).
pub enum Events {
    One(String),
    Many(String),
    /// An app event (`publish`): in the same queue, so it keeps its place among the events
    /// handed over before and after it.
    App {
        room: String,
        json: String,
        except_socket: Option<String>,
        except_user: Option<String>,
    },
}

type Handed = (Events, oneshot::Sender<Result<Outcomes, Error>>);

/// The host's way in: a queue that one task takes in order.
pub struct Ingest {
    tx: mpsc::UnboundedSender<Handed>,
    /// Bytes of text handed over and not yet taken.
    waiting: Arc<AtomicUsize>,
    hub: Arc<Hub>,
}

impl Ingest {
    /// The queue and the task that takes it (to be spawned on the lanes' runtime).
    pub(crate) fn new(hub: Arc<Hub>) -> (Ingest, impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        (
            Ingest {
                tx,
                waiting: waiting.clone(),
                hub: hub.clone(),
            },
            take(hub, rx, waiting),
        )
    }

    /// Hands over events. The answer comes once each is queued for its sockets (after its
    /// authorize rule answered); `Err` for the whole when [`Events::Many`]'s text is not a JSON
    /// array, or the server is closed.
    pub fn submit(&self, events: Events) -> oneshot::Receiver<Result<Outcomes, Error>> {
        let (reply, answer) = oneshot::channel();
        let len = events.len();
        let limit = self.hub.config.max_backlog;
        let waiting = self.waiting.fetch_add(len, Ordering::Relaxed);
        if waiting > 0 && waiting + len > limit {
            // One text larger than the bound alone still goes (the lanes judge it); a queue
            // that holds it already does not take more.
            self.waiting.fetch_sub(len, Ordering::Relaxed);
            crate::stats::Stats::add(&self.hub.stats.ingest_full, 1);
            let _ = reply.send(Err(Error::Behind {
                backlog: waiting,
                limit,
            }));
            return answer;
        }
        if let Err(mpsc::error::SendError((_, reply))) = self.tx.send((events, reply)) {
            let _ = reply.send(Err(Error::Closed));
        }
        answer
    }
}

impl Events {
    fn len(&self) -> usize {
        match self {
            Events::One(text) | Events::Many(text) | Events::App { json: text, .. } => text.len(),
        }
    }
}

/// Takes what was handed over, in order: each is queued on its lane before the next is read.
async fn take(hub: Arc<Hub>, mut rx: mpsc::UnboundedReceiver<Handed>, waiting: Arc<AtomicUsize>) {
    while let Some((events, reply)) = rx.recv().await {
        waiting.fetch_sub(events.len(), Ordering::Relaxed);
        let queued = match events {
            // A lone event that is not JSON is refused by its check, as one event.
            Events::One(json) => Ok(vec![hub.submit_text(&json)]),
            Events::App {
                room,
                json,
                except_socket,
                except_user,
            } => Ok(vec![hub.submit_app(
                &room,
                &json,
                except_socket.as_deref(),
                except_user.as_deref(),
            )]),
            // Each event stays text (see `event`): only the array is read here.
            Events::Many(json) => serde_json::from_str::<Vec<&RawValue>>(&json)
                .map_err(|e| Error::InvalidInput(format!("emitEvents: not a JSON array: {e}")))
                .map(|events| hub.submit_texts(events.into_iter().map(RawValue::get))),
        };
        let queued = match queued {
            Ok(q) => q,
            Err(e) => {
                let _ = reply.send(Err(e));
                continue;
            }
        };
        // Their deliveries are awaited apart: the next events are taken meanwhile.
        tokio::spawn(async move {
            let mut outcomes = Vec::with_capacity(queued.len());
            for q in queued {
                outcomes.push(match q {
                    Ok(delivered) => delivered.await.map_err(|_| Error::Closed),
                    Err(e) => Err(e),
                });
            }
            let _ = reply.send(Ok(outcomes));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::dispatch::test_hub;
    use crate::protocol::collection_room;

    #[tokio::test]
    async fn events_handed_over_keep_their_order_and_bad_text_is_refused() {
        let hub = test_hub();
        let (ingest, take) = Ingest::new(hub.clone());
        tokio::spawn(take);
        let peer = hub.new_socket(None, None);
        hub.registry.add_socket(peer.clone());
        hub.registry.join(&peer, &collection_room("posts"), 10);
        let event = |i: u64| format!(r#"{{"type":"update","collection":"posts","id":{i},"timestamp":"t"}}"#);
        let mut answers = Vec::new();
        // One at a time, then 50 together, then one at a time again.
        for i in 0..50 {
            answers.push(ingest.submit(Events::One(event(i))));
        }
        let many: Vec<String> = (50..100).map(event).collect();
        answers.push(ingest.submit(Events::Many(format!("[{}]", many.join(",")))));
        for i in 100..110 {
            answers.push(ingest.submit(Events::One(event(i))));
        }
        let bad_json = ingest.submit(Events::One("{".into()));
        let not_array = ingest.submit(Events::Many("{}".into()));
        let bad_event = ingest.submit(Events::One(r#"{"type":"nope","collection":"posts","id":1}"#.into()));
        let mut delivered = 0;
        for a in answers {
            for outcome in a.await.unwrap().unwrap() {
                delivered += outcome.unwrap();
            }
        }
        assert_eq!(delivered, 110);
        let refused = bad_json.await.unwrap().unwrap();
        assert!(matches!(refused.as_slice(), [Err(Error::InvalidInput(_))]));
        assert!(matches!(not_array.await.unwrap(), Err(Error::InvalidInput(_))));
        let refused = bad_event.await.unwrap().unwrap();
        assert!(matches!(refused.as_slice(), [Err(Error::InvalidInput(_))]));
        // In the order they were handed over.
        assert_eq!(hub.stats.events.load(std::sync::atomic::Ordering::Relaxed), 110);
        assert_eq!(peer.outbound.drain_ids(), (0..110).collect::<Vec<u64>>());
        hub.shutdown.cancel();
    }

    /// Texts handed over faster than they are taken are refused past `maxBacklog` bytes, at
    /// once and counted, instead of the queue growing; taken ones make room again.
    #[tokio::test]
    async fn the_queue_refuses_past_max_backlog_bytes() {
        let hub = crate::delivery::dispatch::test_hub_with(crate::config::Config {
            max_backlog: 2048,
            ..Default::default()
        });
        let (ingest, take) = Ingest::new(hub.clone());
        let event = |i: u64| {
            format!(
                r#"{{"type":"update","collection":"posts","id":{i},"doc":{{"pad":"{}"}},"timestamp":"t"}}"#,
                "x".repeat(800)
            )
        };
        // Nobody takes yet: two fit, the third is refused.
        let first = ingest.submit(Events::One(event(0)));
        let second = ingest.submit(Events::One(event(1)));
        let refused = ingest.submit(Events::One(event(2)));
        assert!(matches!(refused.await.unwrap(), Err(Error::Behind { limit: 2048, .. })));
        assert_eq!(hub.stats().ingest_full, 1);
        tokio::spawn(take);
        for answer in [first, second] {
            assert!(answer.await.unwrap().is_ok());
        }
        assert!(ingest.submit(Events::One(event(3))).await.unwrap().is_ok());
        hub.shutdown.cancel();
    }
}
