//! Ordered delivery lanes. Every event and broadcast for a room goes through the same lane (the
//! room's hash picks it), so members see a room's messages in the order they were emitted even
//! when an authorize answer for one event takes longer than the next event's.
//!
//! A lane keeps several authorize questions in flight at once (`FuturesOrdered`) and delivers
//! the answers in order. Head-of-line blocking is limited to rooms that share a lane, and bounded
//! by the authorize timeout.
//!
//! Whatever is ready together is delivered as one burst (`deliver_burst`): a room's events in
//! it go to each member as one buffer, and the sockets are woken once the burst is queued, so
//! each writes it with one syscall.
//!
//! A lane does not queue faster than the sockets are written: when a run leaves a socket's
//! queue past `maxBackpressure` while its client still takes what is written, the lane waits
//! for that socket's writer before it queues the next run ([`catch_up`]). An application that
//! emits faster than the server writes is held back there (its `emitEvent` answers later)
//! instead of the clients being closed as slow consumers for the server's own backlog.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, StreamExt};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};

use crate::delivery::authorize::allowed_users;
use crate::delivery::hub::recovery::replay_frames;
use crate::delivery::hub::Hub;
use crate::delivery::lanes::{Barrier, Delivery, Job};
use crate::delivery::rooms::{AllowedUsers, Except, Joined, RunFrame};
use crate::stats::Stats;
use crate::write::flush::Wakes;
use crate::write::outbound::EVICTION_GRACE;

/// Authorize questions one lane keeps in flight before it stops taking new jobs.
const MAX_IN_FLIGHT: usize = 256;

/// Who a prepared job goes to (but its `except`).
enum Target {
    /// Every member at delivery time.
    Room,
    /// The members whose user was allowed (some with a frame of their own), as the room is
    /// at delivery time.
    Only(AllowedUsers),
}

struct Prepared {
    room: Arc<str>,
    frame: Bytes,
    offset: Option<u64>,
    target: Target,
    except: Except,
    done: Option<oneshot::Sender<usize>>,
    /// What it counts in the hub's backlog (an event's frame; 0 for a broadcast).
    backlog: usize,
}

/// Queue pushes one burst makes before its sockets are woken: a few milliseconds of pushing.
/// Bigger bursts would write more per syscall but hold back the first frames for longer.
const BURST_PUSHES: usize = 65_536;

/// Most bytes of one room's consecutive events merged into one buffer (see [`Run`]): as much
/// as one pipe holds ([`crate::write::splice::MAX_BYTES`]), so that a burst of 100 events of 1 KB
/// is one `tee` and one `splice` per socket; smaller runs cost more CPU per message (measured in
/// docs/design.md).
const RUN_BYTES: usize = crate::write::splice::MAX_BYTES;

/// Runs one lane until its channel closes or the server shuts down.
pub(crate) async fn run_lane(hub: Arc<Hub>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut pending = FuturesOrdered::new();
    loop {
        tokio::select! {
            job = jobs.recv(), if pending.len() < MAX_IN_FLIGHT => {
                let Some(job) = job else { break };
                // Every job queued now is taken before any is prepared: events emitted
                // together ask their authorize questions together (one crossing into JS).
                let mut next = Some(job);
                while let Some(job) = next.take() {
                    accept(&hub, &mut pending, job).await;
                    if pending.len() < MAX_IN_FLIGHT {
                        next = jobs.try_recv().ok();
                    }
                }
            }
            Some(ready) = pending.next(), if !pending.is_empty() => deliver_burst(&hub, &mut pending, ready).await,
            _ = hub.shutdown.cancelled() => break,
        }
    }
}

type Pending = FuturesOrdered<std::pin::Pin<Box<dyn std::future::Future<Output = Prepared> + Send>>>;

/// Starts preparing a job, or runs it now if it is a barrier.
async fn accept(hub: &Arc<Hub>, pending: &mut Pending, job: Job) {
    match job {
        Job::Many(jobs) => {
            for job in jobs {
                Box::pin(accept(hub, pending, job)).await;
            }
        }
        Job::Recover {
            room,
            authorize,
            peer,
            entries,
            through,
        } => {
            let hub = hub.clone();
            tokio::spawn(async move {
                let frames = replay_frames(&hub, authorize.as_deref(), &peer, &entries).await;
                let finish = Job::Barrier(Barrier::RecoverFinish {
                    room: room.clone(),
                    peer: peer.clone(),
                    frames,
                    replayed: entries.iter().map(|e| e.offset).collect(),
                    through,
                    done: None,
                });
                if hub.send_job(&room, finish).is_err() {
                    peer.end_recovery(&room, Default::default(), through);
                }
            });
        }
        Job::Barrier(barrier) => {
            // Everything before it is delivered first.
            let mut wakes = Wakes::on(hub.flushers.get());
            while let Some(ready) = pending.next().await {
                deliver(hub, ready, &mut wakes).await;
            }
            wakes.flush();
            run_barrier(hub, barrier).await;
        }
        Job::Deliver(delivery) => pending.push_back(Box::pin(prepare(hub.clone(), delivery))),
    }
}

/// Delivers `first` and every prepared job that is ready behind it, as one burst: frames are
/// queued for up to about [`BURST_PUSHES`] queue pushes before the sockets are woken (see
/// [`Wakes`]), and each room's events in the burst go to each member as one buffer (see
/// [`Burst`]).
async fn deliver_burst(hub: &Hub, pending: &mut Pending, first: Prepared) {
    let mut burst = Burst::default();
    let mut next = Some(first);
    while let Some(p) = next.take() {
        burst.add(hub, p);
        if burst.pushes >= BURST_PUSHES {
            break;
        }
        // One look, with the lane's own waker: if the next is not ready, it wakes the lane.
        if let Poll::Ready(Some(ready)) = std::future::poll_fn(|cx| Poll::Ready(pending.poll_next_unpin(cx))).await {
            next = Some(ready);
        }
    }
    let mut wakes = Wakes::on(hub.flushers.get());
    for run in burst.runs {
        run.deliver(hub, &mut wakes).await;
    }
    wakes.flush();
}

/// How often a lane looks again at the sockets it waits for.
const CATCH_UP_POLL: Duration = Duration::from_millis(1);

/// Waits until the sockets the last deliveries left past their bound ([`Wakes::take_behind`])
/// are written down to it, or stopped taking writes (the next push evicts them), or closed. The
/// sockets queued to so far are woken first, so their writers run meanwhile.
///
/// The wait is for the server's own writers, which always get their turn; after
/// [`EVICTION_GRACE`] it gives up anyway, so a stuck writer cannot hold the lane for good.
/// Polled rather than notified: it only runs when the server is behind by a whole bound, and
/// a millisecond is little next to writing a megabyte to each of many sockets.
async fn catch_up(hub: &Hub, wakes: &mut Wakes) {
    let behind = wakes.take_behind();
    if behind.is_empty() {
        return;
    }
    wakes.flush();
    Stats::add(&hub.stats.backlog_waits, 1);
    let deadline = Instant::now() + EVICTION_GRACE;
    for peer in behind {
        while peer.outbound.is_behind() && Instant::now() < deadline && !hub.shutdown.is_cancelled() {
            if hub.overflow.load(std::sync::atomic::Ordering::Relaxed) {
                // Messages that cannot be held back wait behind this reader, past `maxBacklog`:
                // it is closed as a slow consumer rather than the backlog growing for it.
                peer.outbound.evict();
                hub.registry.evict_all(std::slice::from_ref(&peer), &hub.stats);
                Stats::add(&hub.stats.backlog_evictions, 1);
                break;
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }
}

/// A burst's events gathered into runs, one room's in order. An event joins its room's last
/// run even when other rooms' events came between: a room's members still get its events in
/// order, and rooms never had an order between them (each may be on another lane). Events
/// spread over many rooms (1,000 rooms of 10 sockets) then reach each socket as one buffer
/// instead of one push per event.
#[derive(Default)]
struct Burst {
    runs: Vec<Run>,
    /// Each room's last run (an index into `runs`).
    last: FxHashMap<Arc<str>, usize>,
    /// The queue pushes delivering the runs will make, about (each run's members when it began).
    pushes: usize,
}

impl Burst {
    fn add(&mut self, hub: &Hub, p: Prepared) {
        if let Some(&i) = self.last.get(&p.room) {
            if self.runs[i].takes(&p) {
                self.runs[i].add(p);
                return;
            }
        }
        self.pushes += hub.registry.member_count(&p.room).max(1);
        self.last.insert(p.room.clone(), self.runs.len());
        self.runs.push(Run::new(p));
    }
}

/// Events of one room within a burst. Each member gets the ones it may have as one
/// buffer, the frames end to end: one queue push and one slot of the socket's `writev` per
/// member for the whole run, where pushing them one by one cost a push per event per member
/// (10,000 members, 100 events: a million pushes, a third of the burst's CPU).
struct Run {
    room: Arc<str>,
    except: Except,
    frames: Vec<RunFrame>,
    bytes: usize,
    /// Where each frame's count of sockets goes (`emitEvent`'s result).
    done: Vec<Option<oneshot::Sender<usize>>>,
    /// What its frames count in the hub's backlog, released once they are queued.
    backlog: usize,
}

impl Run {
    fn new(p: Prepared) -> Run {
        let mut run = Run {
            room: p.room.clone(),
            except: p.except.clone(),
            frames: Vec::new(),
            bytes: 0,
            done: Vec::new(),
            backlog: 0,
        };
        run.add(p);
        run
    }

    /// Whether `p` can join this run (of its room): same `except`, and room left in the buffer.
    fn takes(&self, p: &Prepared) -> bool {
        self.room == p.room && self.except == p.except && self.bytes + p.frame.len() <= RUN_BYTES
    }

    fn add(&mut self, p: Prepared) {
        self.bytes += p.frame.len();
        self.backlog += p.backlog;
        self.frames.push(RunFrame {
            frame: p.frame,
            offset: p.offset,
            allowed: match p.target {
                Target::Room => None,
                Target::Only(allowed) => Some(allowed),
            },
        });
        self.done.push(p.done);
    }

    /// Queues the run for the room's members (each frame's count of sockets goes to its `done`),
    /// then waits for the writers of any it left behind ([`catch_up`]).
    async fn deliver(self, hub: &Hub, wakes: &mut Wakes) {
        let (_, counts) = hub
            .registry
            .fan_out_run(&self.room, &self.frames, self.except, &hub.stats, wakes);
        let left = hub
            .backlog
            .fetch_sub(self.backlog, std::sync::atomic::Ordering::Relaxed)
            - self.backlog;
        if left < hub.config.max_backlog {
            hub.overflow.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        for (done, n) in self.done.into_iter().zip(counts) {
            if let Some(done) = done {
                let _ = done.send(n);
            }
        }
        catch_up(hub, wakes).await;
    }
}

async fn run_barrier(hub: &Hub, barrier: Barrier) {
    match barrier {
        Barrier::RecoverStart { room, peer, ready } => {
            peer.start_recovery(&room);
            let joined = hub.registry.join(&peer, &room, hub.config.max_rooms_per_socket) == Joined::New;
            if !joined {
                peer.end_recovery(&room, Default::default(), 0);
            }
            let _ = ready.send(joined);
        }
        Barrier::RecoverFinish {
            room,
            peer,
            frames,
            replayed,
            through,
            done,
        } => {
            for frame in frames {
                hub.registry.send_to(&peer, frame, &hub.stats);
            }
            // Live copies of what the replay carried are dropped: each offset once.
            for (_, frame) in peer.end_recovery(&room, replayed, through) {
                hub.registry.send_to(&peer, frame, &hub.stats);
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
    }
}

/// A delivery that needs no preparation, as prepared.
fn prepare_now(hub: &Hub, delivery: Delivery) -> Prepared {
    match delivery {
        Delivery::Broadcast { room, frame, except } => Prepared {
            room,
            backlog: frame.len(),
            frame,
            offset: None,
            target: Target::Room,
            except: except.into(),
            done: None,
        },
        Delivery::Missed { room } => {
            // Drops from here on need a signal of their own.
            hub.missed.lock().remove(&room);
            let collection = room.strip_prefix("collection:").unwrap_or("");
            Prepared {
                frame: crate::protocol::recovery_failed(&room, collection, "Dropped"),
                room,
                offset: None,
                target: Target::Room,
                except: Except::default(),
                done: None,
                backlog: 0,
            }
        }
        Delivery::Event {
            room,
            frame,
            offset,
            done,
            except,
            ..
        } => Prepared {
            room,
            backlog: frame.len(),
            frame,
            offset,
            target: Target::Room,
            except,
            done,
        },
    }
}

async fn prepare(hub: Arc<Hub>, delivery: Delivery) -> Prepared {
    match delivery {
        Delivery::Event {
            room,
            authorize: Some(collection),
            body,
            frame,
            offset,
            done,
            except,
        } => {
            let users = hub.registry.users(&room);
            let allowed = match &hub.callbacks.authorizer {
                Some(a) => {
                    allowed_users(&**a, &collection, body, users, hub.config.authorize_timeout, &hub.stats).await
                }
                None => AllowedUsers::Every(users),
            };
            Prepared {
                room,
                backlog: frame.len(),
                frame,
                offset,
                target: Target::Only(allowed),
                except,
                done,
            }
        }
        other => prepare_now(&hub, other),
    }
}

/// Queues a prepared job's frame for its sockets.
async fn deliver(hub: &Hub, p: Prepared, wakes: &mut Wakes) {
    Run::new(p).deliver(hub, wakes).await
}

/// A hub with default options and its lanes running on the test's runtime.
#[cfg(test)]
pub(crate) fn test_hub() -> Arc<Hub> {
    test_hub_with(crate::config::Config::default())
}

/// [`test_hub`] with these options.
#[cfg(test)]
pub(crate) fn test_hub_with(config: crate::config::Config) -> Arc<Hub> {
    let (hub, lanes) = Hub::new(config, crate::host::callbacks::Callbacks::default());
    for lane in lanes {
        tokio::spawn(run_lane(hub.clone(), lane));
    }
    hub
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::lanes::lane_of;
    use crate::error::Error;
    use crate::protocol::collection_room;
    use crate::write::socket::Socket;
    use serde_json::{json, Value};
    use std::time::Duration;

    /// A hub with these options and one socket in `posts`' room (nobody writes it: the test does).
    fn hub_with_a_posts_reader(config: crate::config::Config) -> (Arc<Hub>, Arc<Socket>) {
        let hub = test_hub_with(config);
        let peer = hub.new_socket(None, None);
        hub.registry.add_socket(peer.clone());
        hub.registry.join(&peer, &collection_room("posts"), 10);
        (hub, peer)
    }

    /// A collection whose room shares a lane with `posts`' (so that their events meet in one
    /// burst).
    fn lane_mate() -> String {
        (0..1000)
            .map(|i| format!("c{i}"))
            .find(|c| lane_of(&collection_room(c)) == lane_of(&collection_room("posts")))
            .expect("some collection shares the lane")
    }

    #[tokio::test]
    async fn a_burst_gives_each_member_one_buffer_per_room_even_when_rooms_alternate() {
        let hub = test_hub();
        let other = lane_mate();
        let both = hub.new_socket(None, None);
        let posts_only = hub.new_socket(None, None);
        for p in [&both, &posts_only] {
            hub.registry.add_socket(p.clone());
            hub.registry.join(p, &collection_room("posts"), 10);
        }
        hub.registry.join(&both, &collection_room(&other), 10);
        // 20 events emitted together, the two rooms alternating.
        let events = (0..20)
            .map(|i| {
                let c = if i % 2 == 0 { "posts" } else { other.as_str() };
                json!({"type": "update", "collection": c, "id": i, "timestamp": "t"})
            })
            .collect();
        let delivered = hub.submit_events(events);
        let mut counts = Vec::new();
        for d in delivered {
            counts.push(
                tokio::time::timeout(Duration::from_secs(5), d.unwrap())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(
            counts,
            (0..20).map(|i| if i % 2 == 0 { 2 } else { 1 }).collect::<Vec<_>>()
        );
        // One buffer per room: posts' ten events, then the other room's ten.
        assert_eq!(posts_only.outbound.queued_buffers(), 1);
        assert_eq!(both.outbound.queued_buffers(), 2);
        let ids = both.outbound.drain_ids();
        // Each room's events in order.
        let evens: Vec<u64> = ids.iter().copied().filter(|i| i % 2 == 0).collect();
        let odds: Vec<u64> = ids.iter().copied().filter(|i| i % 2 == 1).collect();
        assert_eq!(evens, (0..20).step_by(2).collect::<Vec<u64>>());
        assert_eq!(odds, (1..20).step_by(2).collect::<Vec<u64>>());
        hub.shutdown.cancel();
    }

    /// Events emitted at once, many times the bound, reach a socket whose writes go through:
    /// the lane queues a run, waits for the writer, queues the next. The queue never holds more
    /// than the bound and a run, and nobody is evicted. Evicting on bytes alone closed it at
    /// the second run.
    #[tokio::test]
    async fn a_burst_past_the_bound_waits_for_the_writer_instead_of_evicting() {
        let limit = 16 * 1024;
        let config = crate::config::Config {
            max_backpressure: limit,
            ..Default::default()
        };
        let (hub, peer) = hub_with_a_posts_reader(config);
        // 1,200 events of about 1 KB: 1.2 MB, 75 times the bound, five runs.
        let pad = "x".repeat(1000);
        let events = (0..1200)
            .map(|i| json!({"type": "update", "collection": "posts", "id": i, "doc": {"pad": pad}, "timestamp": "t"}))
            .collect();
        let delivered = hub.submit_events(events);
        // The writer: takes what is queued every millisecond, all of it going through.
        let (mut ids, mut most) = (Vec::new(), 0);
        let writer = async {
            while ids.len() < 1200 {
                most = most.max(peer.outbound.queued_bytes());
                ids.extend(peer.outbound.drain_ids());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), writer)
            .await
            .expect("every event arrives");
        for d in delivered {
            assert_eq!(d.unwrap().await.unwrap(), 1);
        }
        assert_eq!(ids, (0..1200).collect::<Vec<u64>>());
        assert!(!peer.outbound.was_evicted());
        assert_eq!(hub.stats.slow_consumers.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert!(
            most <= limit + RUN_BYTES + 2048,
            "queued at most the bound and a run: {most}"
        );
        assert!(hub.stats.backlog_waits.load(std::sync::atomic::Ordering::Relaxed) >= 4);
        assert_eq!(hub.stats().backlog_bytes, 0);
        hub.shutdown.cancel();
    }

    /// While the lane waits for a writer, what is emitted waits on the lane and counts in the
    /// backlog; past `maxBacklog` events are refused (before they are numbered or published),
    /// and accepted again once the writer caught up.
    #[tokio::test]
    async fn past_max_backlog_events_are_refused_until_the_writer_catches_up() {
        let config = crate::config::Config {
            max_backpressure: 1024,
            max_backlog: 8 * 1024,
            ..Default::default()
        };
        let (hub, peer) = hub_with_a_posts_reader(config);
        let pad = "x".repeat(2000);
        let event =
            |i: u64| json!({"type": "update", "collection": "posts", "id": i, "doc": {"pad": pad}, "timestamp": "t"});
        // The first is queued and leaves the socket past its bound: the lane waits for it.
        assert_eq!(hub.submit_event(event(0)).unwrap().await.unwrap(), 1);
        assert!(peer.outbound.is_behind());
        // The next ones wait on the lane, counted, until the backlog reaches 8 KB.
        let mut waiting = Vec::new();
        let refused = loop {
            match hub.submit_event(event(waiting.len() as u64 + 1)) {
                Ok(done) => waiting.push(done),
                Err(e) => break e,
            }
            assert!(waiting.len() < 10, "refused by then");
        };
        assert_eq!(waiting.len(), 4);
        assert!(matches!(refused, Error::Behind { limit: 8192, .. }), "{refused}");
        assert!(refused.to_string().contains("maxBacklog"));
        assert!(hub.stats().backlog_bytes >= 8 * 1024);
        assert_eq!(hub.stats.events.load(std::sync::atomic::Ordering::Relaxed), 5);
        // The writer catches up: the waiting ones go out, and events are taken again.
        let mut ids = Vec::new();
        let writer = async {
            while ids.len() < 6 {
                ids.extend(peer.outbound.drain_ids());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let again = async {
            for done in waiting {
                assert_eq!(done.await.unwrap(), 1);
            }
            assert_eq!(hub.stats().backlog_bytes, 0);
            hub.submit_event(event(5)).unwrap().await.unwrap()
        };
        let ((), n) = tokio::time::timeout(Duration::from_secs(20), futures_util::future::join(writer, again))
            .await
            .expect("the writer catches up");
        assert_eq!(n, 1);
        assert_eq!(ids, (0..6).collect::<Vec<u64>>());
        assert!(!peer.outbound.was_evicted());
        hub.shutdown.cancel();
    }

    /// Authorizes events whose `id` is below 100 (the history's) only once the gate opens;
    /// later events at once.
    struct Gate(tokio::sync::watch::Receiver<bool>);

    impl crate::host::callbacks::Authorizer for Gate {
        fn authorize(
            &self,
            req: crate::host::callbacks::AuthorizeRequest,
        ) -> crate::host::callbacks::BoxFuture<Result<Vec<crate::host::callbacks::Decision>, String>> {
            let allow = vec![crate::host::callbacks::Decision::Allow; req.users.len()];
            let mut gate = self.0.clone();
            let held = req.event["id"].as_u64().is_some_and(|id| id < 100);
            Box::pin(async move {
                if held {
                    let _ = gate.wait_for(|open| *open).await;
                }
                Ok(allow)
            })
        }
    }

    fn history_config() -> crate::config::Config {
        crate::config::Config {
            history: vec![crate::config::HistoryRule {
                pattern: "collection:*".into(),
                policy: crate::config::HistoryPolicy {
                    size: 100,
                    ttl: None,
                    max_bytes: crate::config::DEFAULT_HISTORY_MAX_BYTES,
                },
            }],
            ..Default::default()
        }
    }

    fn test_user(id: u64) -> crate::auth::User {
        crate::auth::User::from_claims(json!({"id": id, "collection": "users"})).unwrap()
    }

    /// Waits (yielding to the lanes) until the socket is in the room: a recovery joins it in
    /// the lane.
    async fn until_in(peer: &Socket, room: &str) {
        tokio::time::timeout(Duration::from_secs(30), async {
            while !peer.in_room(room) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("joined");
    }

    fn event(collection: &str, id: u64) -> Value {
        json!({"type": "update", "collection": collection, "id": id, "timestamp": "t"})
    }

    fn epoch_of(hub: &Hub, collection: &str) -> String {
        hub.histories
            .room(&collection_room(collection))
            .unwrap()
            .lock()
            .epoch
            .clone()
    }

    /// A replay waiting for its authorize answers holds back only the recovering socket's own
    /// frames of that room: a live event for another room of the same lane is delivered
    /// meanwhile (the replay used to be asked inside the lane's barrier, stalling it for up to
    /// `authorizeTimeout`), and the recovering socket still gets the replay, then live events,
    /// in order.
    #[tokio::test]
    async fn a_replay_waiting_for_authorize_does_not_stall_its_lane() {
        let other = lane_mate();
        let mut config = history_config();
        config.authorize_timeout = Duration::from_secs(3600);
        config.host_rules.authorize_collections = ["posts".to_string(), other.clone()].into();
        let (open, gate) = tokio::sync::watch::channel(false);
        let callbacks = crate::host::callbacks::Callbacks {
            authorizer: Some(Arc::new(Gate(gate))),
            ..Default::default()
        };
        let (hub, lanes) = Hub::new(config, callbacks);
        for lane in lanes {
            tokio::spawn(run_lane(hub.clone(), lane));
        }
        for id in 0..5 {
            hub.submit_event(event("posts", id)).unwrap().await.unwrap();
        }
        let recovering = hub.new_socket(Some(test_user(1)), None);
        let bystander = hub.new_socket(Some(test_user(2)), None);
        hub.registry.add_socket(recovering.clone());
        hub.registry.add_socket(bystander.clone());
        hub.registry.join(&bystander, &collection_room(&other), 10);
        let since = crate::protocol::Since {
            offset: 0,
            epoch: epoch_of(&hub, "posts"),
        };
        let outcome = hub.join_collection(&recovering, "posts", Some(&since)).unwrap();
        assert_eq!(outcome.recovery, Some(Ok(())));
        // Live events meanwhile: one in the same room, one in the other room of the lane.
        let live = hub.submit_event(event("posts", 500)).unwrap();
        let elsewhere = hub.submit_event(event(&other, 501)).unwrap();
        let n = tokio::time::timeout(Duration::from_secs(30), elsewhere)
            .await
            .expect("the lane is not stalled by the replay")
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(bystander.outbound.drain_ids(), vec![501]);
        // The recovering socket has nothing yet: its replay waits, and its live frame with it.
        live.await.unwrap();
        assert!(recovering.outbound.drain_ids().is_empty());
        open.send(true).unwrap();
        let mut ids = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while ids.len() < 6 {
                ids.extend(recovering.outbound.drain_ids());
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the replay and the held live event arrive");
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 500]);
        hub.shutdown.cancel();
    }

    /// A socket joins its room at once when it recovers, while events recorded before the
    /// snapshot may still wait on the lane: their live copies are dropped (those up to `since`
    /// the client has, the rest the replay carries), so each event arrives once, in order.
    #[tokio::test]
    async fn events_still_on_the_lane_at_a_recovery_arrive_once() {
        let hub = test_hub_with(history_config());
        let (other, recovering) = (hub.new_socket(None, None), hub.new_socket(None, None));
        for p in [&other, &recovering] {
            hub.registry.add_socket(p.clone());
        }
        hub.registry.join(&other, &collection_room("posts"), 10);
        // Queued on the lane, not yet delivered (the lane runs when this test awaits).
        let queued: Vec<_> = (1..=3)
            .map(|id| hub.submit_event(event("posts", id)).unwrap())
            .collect();
        let since = crate::protocol::Since {
            offset: 2,
            epoch: epoch_of(&hub, "posts"),
        };
        let outcome = hub.join_collection(&recovering, "posts", Some(&since)).unwrap();
        assert_eq!(outcome.recovery, Some(Ok(())));
        for q in queued {
            q.await.unwrap();
        }
        hub.submit_event(event("posts", 4)).unwrap().await.unwrap();
        let mut ids = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while ids.len() < 2 {
                ids.extend(recovering.outbound.drain_ids());
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the replay and the live event");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        ids.extend(recovering.outbound.drain_ids());
        assert_eq!(ids, vec![3, 4]);
        assert_eq!(other.outbound.drain_ids(), vec![1, 2, 3, 4]);
        hub.shutdown.cancel();
    }

    /// A socket that leaves and rejoins with `since` in a loop gets `maxRecoveriesPerMinute`
    /// replays, then joins live with `Limited`; the others in the room keep their events.
    #[tokio::test]
    async fn rejoining_with_since_in_a_loop_is_limited() {
        let mut config = history_config();
        config.max_recoveries_per_minute = 3;
        let hub = test_hub_with(config);
        let (looping, other) = (hub.new_socket(None, None), hub.new_socket(None, None));
        for p in [&looping, &other] {
            hub.registry.add_socket(p.clone());
        }
        hub.registry.join(&other, &collection_room("posts"), 10);
        let since = crate::protocol::Since {
            offset: 0,
            epoch: epoch_of(&hub, "posts"),
        };
        let mut results = Vec::new();
        for id in 0..6 {
            assert_eq!(hub.submit_event(event("posts", id)).unwrap().await.unwrap(), 1);
            let outcome = hub.join_collection(&looping, "posts", Some(&since)).unwrap();
            results.push(outcome.recovery.unwrap());
            until_in(&looping, &collection_room("posts")).await;
            hub.registry.leave(&looping, &collection_room("posts"));
        }
        let limited = Err(crate::cluster::history::RecoveryFailed::Limited);
        assert_eq!(results, vec![Ok(()), Ok(()), Ok(()), limited, limited, limited]);
        assert_eq!(hub.stats().recoveries_limited, 3);
        assert_eq!(other.outbound.drain_ids(), (0..6).collect::<Vec<u64>>());
        // Another room has its own count.
        hub.submit_event(event("pages", 1)).unwrap().await.unwrap();
        let pages = crate::protocol::Since {
            offset: 0,
            epoch: epoch_of(&hub, "pages"),
        };
        let outcome = hub.join_collection(&looping, "pages", Some(&pages)).unwrap();
        assert_eq!(outcome.recovery, Some(Ok(())));
        hub.shutdown.cancel();
    }

    /// More missed events than `maxRecoveryEvents`: no replay, the socket joins live and is told
    /// to refetch.
    #[tokio::test]
    async fn a_recovery_over_max_recovery_events_is_refused() {
        let mut config = history_config();
        config.max_recovery_events = 3;
        let hub = test_hub_with(config);
        for id in 0..5 {
            hub.submit_event(event("posts", id)).unwrap().await.unwrap();
        }
        let peer = hub.new_socket(None, None);
        hub.registry.add_socket(peer.clone());
        let epoch = epoch_of(&hub, "posts");
        let since = |offset| crate::protocol::Since {
            offset,
            epoch: epoch.clone(),
        };
        let outcome = hub.join_collection(&peer, "posts", Some(&since(1))).unwrap();
        assert_eq!(
            outcome.recovery,
            Some(Err(crate::cluster::history::RecoveryFailed::TooManyEvents))
        );
        // Refused: joined live, at once (no replay job).
        assert!(peer.in_room(&collection_room("posts")));
        assert_eq!(hub.stats().recoveries_too_long, 1);
        hub.submit_event(event("posts", 9)).unwrap().await.unwrap();
        assert_eq!(peer.outbound.drain_ids(), vec![9], "live only, no replay");
        hub.registry.leave(&peer, &collection_room("posts"));
        let outcome = hub.join_collection(&peer, "posts", Some(&since(3))).unwrap();
        assert_eq!(outcome.recovery, Some(Ok(())));
        hub.shutdown.cancel();
    }

    fn remote_event(id: u64, pad: &str) -> String {
        let body = json!({"type": "update", "collection": "posts", "id": id, "doc": {"pad": pad}, "timestamp": "t"});
        let body = crate::cluster::broker::raw(&body.to_string()).unwrap();
        crate::cluster::broker::Envelope {
            v: 1,
            from: "elsewhere",
            kind: crate::cluster::broker::Kind::Event {
                collection: "posts",
                room: None,
                body: &body,
                offset: None,
                except: None,
                except_user: None,
            },
        }
        .encode()
    }

    /// Events from Redis cannot be held back like `emitEvent`'s: when they bring the backlog to
    /// `maxBacklog` while the lane waits for a reader that is behind, the lane stops waiting and
    /// closes that reader (4008), and the reader that keeps up gets every event. Before, the
    /// lane waited `EVICTION_GRACE` per run while the events from Redis piled up unbounded.
    #[tokio::test]
    async fn a_flood_from_redis_evicts_the_reader_behind_and_the_others_get_everything() {
        let config = crate::config::Config {
            max_backpressure: 1024,
            max_backlog: 64 * 1024,
            ..Default::default()
        };
        let hub = test_hub_with(config);
        let (slow, normal) = (hub.new_socket(None, None), hub.new_socket(None, None));
        for p in [&slow, &normal] {
            hub.registry.add_socket(p.clone());
            hub.registry.join(p, &collection_room("posts"), 10);
        }
        let pad = "x".repeat(900);
        let mut ids = Vec::new();
        // The first events leave both readers behind (past maxBackpressure, still taking).
        for id in 0..4 {
            hub.on_remote(&remote_event(id, &pad));
        }
        tokio::time::timeout(Duration::from_secs(30), async {
            while !slow.outbound.is_behind() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the first run is queued");
        // The flood goes on while the lane waits: about 100 KB, past maxBacklog.
        for id in 4..100 {
            hub.on_remote(&remote_event(id, &pad));
        }
        assert!(hub.stats().backlog_bytes >= 64 * 1024);
        tokio::time::timeout(Duration::from_secs(30), async {
            while ids.len() < 100 {
                ids.extend(normal.outbound.drain_ids());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the reader that keeps up gets everything");
        assert_eq!(ids, (0..100).collect::<Vec<u64>>());
        assert!(slow.outbound.was_evicted());
        assert!(!normal.outbound.was_evicted());
        let stats = hub.stats();
        assert_eq!((stats.backlog_evictions, stats.slow_consumers), (1, 1));
        assert_eq!(stats.backlog_dropped, 0);
        assert_eq!(stats.backlog_bytes, 0);
        hub.shutdown.cancel();
    }

    /// Past twice `maxBacklog` (the server cannot keep up) events from Redis are dropped, and
    /// the room is told (`recovery-failed`, `Dropped`) after what it got before: never silently.
    #[tokio::test]
    async fn events_from_redis_past_twice_max_backlog_are_dropped_and_said_so() {
        let config = crate::config::Config {
            max_backlog: 64 * 1024,
            ..Default::default()
        };
        let hub = test_hub_with(config);
        let reader = hub.new_socket(None, None);
        hub.registry.add_socket(reader.clone());
        hub.registry.join(&reader, &collection_room("posts"), 10);
        let pad = "x".repeat(900);
        for id in 0..300 {
            hub.on_remote(&remote_event(id, &pad));
        }
        let dropped = hub.stats().backlog_dropped as usize;
        assert!(dropped > 0 && dropped < 300, "{dropped}");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while got.len() < 300 - dropped + 1 {
                got.extend(reader.outbound.drain_messages());
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("what was admitted, then the signal");
        let last = got.pop().unwrap();
        assert_eq!(last["type"], "recovery-failed");
        assert_eq!(last["reason"], "Dropped");
        assert_eq!(last["collection"], "posts");
        let ids: Vec<u64> = got.iter().map(|m| m["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<u64>>());
        assert!(!reader.outbound.was_evicted());
        assert_eq!(hub.stats().backlog_bytes, 0);
        hub.shutdown.cancel();
    }

    /// Broadcasts count in the backlog like events (they were free of it).
    #[tokio::test]
    async fn broadcasts_count_in_the_backlog() {
        let hub = test_hub_with(crate::config::Config {
            max_backlog: 4096,
            ..Default::default()
        });
        let peer = hub.new_socket(None, None);
        hub.registry.add_socket(peer.clone());
        hub.registry.join(&peer, "chat", 10);
        let msg = format!(r#"{{"type":"m","pad":"{}"}}"#, "y".repeat(3000));
        for _ in 0..4 {
            hub.broadcast_to_room("chat", msg.as_bytes(), None).unwrap();
        }
        assert!(hub.stats().backlog_bytes >= 3 * 3000);
        // Past twice the bound: the fourth was dropped, and the room is told.
        assert_eq!(hub.stats().backlog_dropped, 1);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while got.len() < 4 {
                got.extend(peer.outbound.drain_messages());
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        let types: Vec<&str> = got.iter().map(|m| m["type"].as_str().unwrap()).collect();
        assert_eq!(types, vec!["m", "m", "m", "recovery-failed"]);
        assert_eq!(got[3]["room"], "chat");
        assert!(got[3].get("collection").is_none());
        assert_eq!(hub.stats().backlog_bytes, 0);
        hub.shutdown.cancel();
    }
}
