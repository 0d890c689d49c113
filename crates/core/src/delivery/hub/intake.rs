//! Events into the hub: checked and written once in their final shape, numbered by their
//! room's history (here, or in Redis through the appender), published for the other instances,
//! and queued on their room's lane.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::remote::Append;
use super::Hub;
use crate::delivery::event;
use crate::delivery::lanes::{lane_of, Delivery, Job};
use crate::delivery::rooms::Except;
use crate::error::Error;
use crate::protocol::text_frame;
use crate::stats::Stats;

impl Hub {
    /// [`Hub::submit_text`] for an event as a value.
    #[cfg(test)]
    pub(crate) fn submit_event(&self, input: Value) -> Result<oneshot::Receiver<usize>, Error> {
        self.submit_text(&input.to_string())
    }

    /// Queues a collection event (JSON text, as the host hands it over, for room
    /// `collection:<slug>`) now, in call order: events emitted one after the other are delivered
    /// in that order. What it returns resolves with the number of local sockets once it was
    /// queued to them.
    pub(crate) fn submit_text(&self, text: &str) -> Result<oneshot::Receiver<usize>, Error> {
        self.queue_checked(self.check_event(text)?, None)
    }

    /// [`Hub::submit_texts`] for events as values.
    #[cfg(test)]
    pub(crate) fn submit_events(&self, inputs: Vec<Value>) -> Vec<Result<oneshot::Receiver<usize>, Error>> {
        let texts: Vec<String> = inputs.iter().map(Value::to_string).collect();
        self.submit_texts(texts.iter().map(String::as_str))
    }

    /// Publishes an application event (`publish(room, message, { except })`, JSON text) on the
    /// same path as a collection event: checked and written once, numbered by the room's
    /// history, asked through the authorize rule whose key names the room, sent to the other
    /// instances, and delivered in order with the room's other events. `except_socket` is a
    /// socket id, `except_user` a user key (`<collection>:<id>`): none of that user's sockets
    /// get it, on any instance.
    pub(crate) fn submit_app(
        &self,
        room: &str,
        text: &str,
        except_socket: Option<&str>,
        except_user: Option<&str>,
    ) -> Result<oneshot::Receiver<usize>, Error> {
        if self.stopping.is_cancelled() {
            return Err(Error::Closed);
        }
        let mut event = event::normalize_app(room, text)?;
        event.except = Except {
            peer: except_socket.and_then(|id| self.local_peer_id(id)),
            user: except_user.map(Arc::from),
        };
        event.except_socket = except_socket.map(str::to_string);
        self.queue_checked(event, None)
    }

    /// [`Hub::submit_text`] for several events, in order: all are checked and encoded first,
    /// then queued one right after the other, so the lane finds them together and delivers
    /// them as one burst (see `dispatch`).
    pub(crate) fn submit_texts<'a>(
        &self,
        texts: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Result<oneshot::Receiver<usize>, Error>> {
        let checked: Vec<_> = texts.into_iter().map(|text| self.check_event(text)).collect();
        let mut batch = LaneBatch::default();
        let queued = checked
            .into_iter()
            .map(|event| event.and_then(|e| self.queue_checked(e, Some(&mut batch))))
            .collect();
        for (lane, jobs) in batch.jobs {
            let _ = self.lanes[lane].send(Job::Many(jobs));
        }
        queued
    }

    /// The first step of a submit: the event checked and written once in its final shape (the
    /// same JSON goes into the local frame and the broker envelope).
    fn check_event(&self, text: &str) -> Result<event::Event, Error> {
        if self.stopping.is_cancelled() {
            return Err(Error::Closed);
        }
        event::normalize(text)
    }

    /// What the collection's authorize rule is shown of an event: the event as a value, read
    /// from its JSON only when there is a rule (`Null` otherwise: nothing reads it).
    pub(super) fn rule_body(&self, room: &str, json: &str) -> Arc<Value> {
        Arc::new(if self.authorize_rule(room).is_some() {
            crate::protocol::value_of(json)
        } else {
            Value::Null
        })
    }

    /// The second step: numbered, published and queued on its room's lane.
    /// With `batch`, the job is kept there to be sent with the others (events numbered by a
    /// history are sent at once, under its lock, as always).
    fn queue_checked(
        &self,
        event: event::Event,
        batch: Option<&mut LaneBatch>,
    ) -> Result<oneshot::Receiver<usize>, Error> {
        if self.stopping.is_cancelled() {
            return Err(Error::Closed);
        }
        // Refused before it is numbered or published: an event is sent everywhere or nowhere.
        let backlog = self.backlog.load(Ordering::Relaxed);
        if backlog >= self.config.max_backlog {
            return Err(Error::Behind {
                backlog,
                limit: self.config.max_backlog,
            });
        }
        Stats::add(&self.stats.events, 1);
        if let (Some(appender), Some(policy)) = (self.appender.get(), self.histories.policy_for(&event.room)) {
            // Redis-backed history: Redis numbers the event first (see `run_appender`). It counts
            // in the backlog while it waits for Redis too.
            self.backlog.fetch_add(event.json.len(), Ordering::Relaxed);
            let (done, delivered) = oneshot::channel();
            let append = Append {
                body: event.body(),
                room: event.room,
                except: event.except,
                except_socket: event.except_socket,
                json: event.json,
                policy,
                done,
            };
            if let Err(mpsc::error::SendError(a)) = appender.send(append) {
                self.backlog.fetch_sub(a.json.len(), Ordering::Relaxed);
                return Err(Error::Closed);
            }
            return Ok(delivered);
        }
        self.publish_event(&event.room, &event.json, None, &event);
        let (done, delivered) = oneshot::channel();
        let room = event.room.clone();
        let queued = match self.histories.room(&room) {
            // Numbered and queued under the room's history lock (see `history`).
            Some(history) => {
                let mut history = history.lock();
                let entry = history.record(event.body());
                self.queue_event(
                    &room,
                    self.rule_body(&room, entry.json()),
                    entry.frame,
                    Some(entry.offset),
                    Some(done),
                    None,
                    event.except,
                )?
            }
            None => self.queue_event(
                &room,
                self.rule_body(&room, &event.json),
                text_frame(event.json.as_bytes()),
                None,
                Some(done),
                batch,
                event.except,
            )?,
        };
        // Not queued (no local member): `done` already got 0.
        let _ = queued;
        Ok(delivered)
    }

    /// Queues an event for local delivery in its room's lane, or into `batch` when given (sent
    /// with the others of its call); `false` if the room has no local member.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn queue_event(
        &self,
        room: &str,
        body: Arc<Value>,
        frame: Bytes,
        offset: Option<u64>,
        done: Option<oneshot::Sender<usize>>,
        batch: Option<&mut LaneBatch>,
        except: Except,
    ) -> Result<bool, Error> {
        let room: Arc<str> = Arc::from(room);
        if self.registry.member_count(&room) == 0 {
            if let Some(done) = done {
                let _ = done.send(0);
            }
            return Ok(false);
        }
        let authorize = self.authorize_rule(&room);
        self.backlog.fetch_add(frame.len(), Ordering::Relaxed);
        let job = Job::Deliver(Delivery::Event {
            room: room.clone(),
            authorize,
            body,
            frame,
            offset,
            done,
            except,
        });
        match batch {
            Some(batch) => batch.push(lane_of(&room), job),
            None => self.send_job(&room, job)?,
        }
        Ok(true)
    }
}

/// Jobs kept to be sent together, one message per lane: the lane takes them in one go, so the
/// events emitted together are prepared, asked about and delivered together.
#[derive(Default)]
pub(super) struct LaneBatch {
    jobs: Vec<(usize, Vec<Job>)>,
}

impl LaneBatch {
    fn push(&mut self, lane: usize, job: Job) {
        match self.jobs.iter_mut().find(|(l, _)| *l == lane) {
            Some((_, jobs)) => jobs.push(job),
            None => self.jobs.push((lane, vec![job])),
        }
    }
}
