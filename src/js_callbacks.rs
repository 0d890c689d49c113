//! Where the core calls into JS: the authorize and custom-handler traits implemented with
//! thread-safe functions. This is the only file that crosses from the server's threads into
//! the JS thread.
//!
//! Both crossings are batched ([`Batcher`]): authorize asks once per event for every distinct
//! user, and the questions of events that are queued at the same moment go together;
//! custom handler calls that arrive together travel in one call. The functions are weak (they
//! never keep Node alive) and JS throws or rejections come back as `Err`, never as a fatal
//! exception (`call_async_catch`, not `call_async`).

use std::sync::Arc;

use napi::bindgen_prelude::{FnArgs, Promise};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::Status;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use payload_realtime_core::host::callbacks::{
    AuthorizeRequest, Authorizer, BoxFuture, CustomHandlers, Decision, HandlerCall, HandlerOutcome, JoinRule,
    UserVerifier,
};
use payload_realtime_core::host::crossing::{authorize_json, SentLists};
use payload_realtime_core::protocol::ErrorCode;
use payload_realtime_core::warn;

/// `(json) => Promise<json>`, both ways JSON text: `{ users, define, forget, requests }` goes
/// in and `answers` comes back. JS keeps the lists of users it is sent, by id: `define` is
/// `[[id, [indices into users]]]` (each distinct user once per crossing), `forget` the ids it may
/// drop, `requests` `[{ collection, event, list }]` with `list` an id. `answers[i]` is `true`
/// when every user of `requests[i]` may read it as it is, `false` when none may, else one
/// `boolean | { doc }` per user. Text, because building JS objects through N-API one property
/// at a time cost more than the rules (docs/design.md); `JSON.parse` and `serde_json` do the same in a fraction of that. Lists kept on the JS
/// side and one-word answers, because 100 events to 1,000 users otherwise carried 100,000
/// indices in and 100,000 booleans out, and a lone event to a room of 1,000 users carried its
/// 100 KB of users every time (see [`SentLists`]).
pub(crate) type AuthorizeFn =
    ThreadsafeFunction<FnArgs<(String,)>, Promise<String>, FnArgs<(String,)>, Status, false, true>;

/// `(calls) => Promise<results>`: `calls` is `[{ type, socketId, user, message }]`, each result
/// `{ ok: true, reply?: any } | { ok: false, code?: string, message: string }`.
pub(crate) type HandlerFn =
    ThreadsafeFunction<FnArgs<(Vec<Value>,)>, Promise<Vec<Value>>, FnArgs<(Vec<Value>,)>, Status, false, true>;

type AuthorizeAnswer = Result<Vec<Decision>, String>;

/// Log lines the JS logger may have waiting: past this a line is dropped and counted
/// (`stats` / `payload_realtime_log_lines_dropped_total`), never queued without bound.
const LOG_QUEUE: usize = 1024;

/// `(level, line) => void`: the server's log lines, already redacted and rate-limited.
pub(crate) type LogFn =
    ThreadsafeFunction<FnArgs<(String, String)>, (), FnArgs<(String, String)>, Status, false, true, LOG_QUEUE>;

/// The host's logger, behind a bounded queue.
pub(crate) struct JsLogger {
    pub f: LogFn,
}

impl payload_realtime_core::log::LogOut for JsLogger {
    fn line(&self, level: payload_realtime_core::log::Level, text: &str) -> bool {
        let status = self.f.call(
            FnArgs::from((level.as_str().to_string(), text.to_string())),
            napi::threadsafe_function::ThreadsafeFunctionCallMode::NonBlocking,
        );
        status == Status::Ok
    }
}

/// Authorize rules through JS, batched across events.
pub(crate) struct JsAuthorizer {
    batcher: Batcher<AuthorizeRequest, AuthorizeAnswer>,
}

impl JsAuthorizer {
    /// Creates the authorizer and the batching task to spawn on the server's runtime.
    pub(crate) fn new(f: Arc<AuthorizeFn>) -> (JsAuthorizer, impl std::future::Future<Output = ()> + Send) {
        let lists = Arc::new(parking_lot::Mutex::new(SentLists::default()));
        let (batcher, task) = Batcher::new(move |batch| run_authorize(f.clone(), lists.clone(), batch));
        (JsAuthorizer { batcher }, task)
    }
}

impl Authorizer for JsAuthorizer {
    fn authorize(&self, req: AuthorizeRequest) -> BoxFuture<AuthorizeAnswer> {
        let answer = self.batcher.call(req);
        Box::pin(async move { answer.await.unwrap_or_else(|| Err("the server is closing".into())) })
    }
}

async fn run_authorize(
    f: Arc<AuthorizeFn>,
    lists: Arc<parking_lot::Mutex<SentLists>>,
    batch: Vec<Pending<AuthorizeRequest, AuthorizeAnswer>>,
) {
    let asked: Vec<usize> = batch.iter().map(|(q, _)| q.users.len()).collect();
    let send = |requests: Vec<AuthorizeRequest>| async move {
        let (whole, forget) = lists.lock().plan(&requests);
        let json = authorize_json(&requests, &whole, &forget).map_err(|e| napi::Error::from_reason(e.to_string()))?;
        let answers = f.call_async_catch(FnArgs::from((json,))).await?.await?;
        let answers = serde_json::from_str::<Vec<Value>>(&answers)
            .map_err(|e| napi::Error::from_reason(format!("authorize answered with bad JSON: {e}")))?;
        lists.lock().answered(&whole);
        // The questions, and so their lists, are held until here (see `SentLists`).
        drop(requests);
        Ok(answers)
    };
    let answer = |i: usize, a: Option<&Value>| match a {
        Some(Value::Array(a)) => Ok(a.iter().map(Decision::from_value).collect()),
        Some(Value::Bool(all)) => Ok(vec![if *all { Decision::Allow } else { Decision::Deny }; asked[i]]),
        _ => Err("authorize gave no answer for this event".to_string()),
    };
    // A failed crossing is logged where its questions were asked (`allowed_users`).
    let _ = cross(batch, send, answer, |e| Err(e.to_string())).await;
}

/// `(token, claims) => Promise<user | null>`: Payload's own check of the user and session.
pub(crate) type VerifyFn =
    ThreadsafeFunction<FnArgs<(String, Value)>, Promise<Value>, FnArgs<(String, Value)>, Status, false, true>;

pub(crate) struct JsVerifier {
    pub f: Arc<VerifyFn>,
}

impl UserVerifier for JsVerifier {
    fn verify(&self, token: String, claims: Value) -> BoxFuture<Result<Option<Value>, String>> {
        let f = self.f.clone();
        Box::pin(async move {
            let promise = f
                .call_async_catch(FnArgs::from((token, claims)))
                .await
                .map_err(|e| e.to_string())?;
            let user = promise.await.map_err(|e| e.to_string())?;
            Ok(match user {
                Value::Object(_) => Some(user),
                _ => None,
            })
        })
    }
}

/// `(questions) => Promise<answers>`: `questions` is `[{ user, rooms }]`, each answer one boolean
/// per room (may this user join it?).
pub(crate) type MayJoinFn =
    ThreadsafeFunction<FnArgs<(Vec<Value>,)>, Promise<Vec<Value>>, FnArgs<(Vec<Value>,)>, Status, false, true>;

type JoinQuestion = (Arc<Value>, Vec<String>);
type JoinAnswer = Result<Vec<bool>, String>;

/// Join rules through JS, batched: the joins of a reconnecting crowd cross together.
pub(crate) struct JsJoinRule {
    batcher: Batcher<JoinQuestion, JoinAnswer>,
}

impl JsJoinRule {
    /// Creates the join rule and the batching task to spawn on the server's runtime.
    pub(crate) fn new(f: Arc<MayJoinFn>) -> (JsJoinRule, impl std::future::Future<Output = ()> + Send) {
        let (batcher, task) = Batcher::new(move |batch| run_may_join(f.clone(), batch));
        (JsJoinRule { batcher }, task)
    }
}

impl JoinRule for JsJoinRule {
    fn may_join(&self, user: Arc<Value>, rooms: Vec<String>) -> BoxFuture<JoinAnswer> {
        let answer = self.batcher.call((user, rooms));
        Box::pin(async move { answer.await.unwrap_or_else(|| Err("the server is closing".into())) })
    }
}

async fn run_may_join(f: Arc<MayJoinFn>, batch: Vec<Pending<JoinQuestion, JoinAnswer>>) {
    let send = |questions: Vec<JoinQuestion>| async move {
        let questions: Vec<Value> = questions
            .into_iter()
            .map(|(user, rooms)| json!({ "user": *user, "rooms": rooms }))
            .collect();
        f.call_async_catch(FnArgs::from((questions,))).await?.await
    };
    let answer = |_, a: Option<&Value>| match a {
        Some(Value::Array(a)) => Ok(a.iter().map(|v| v == &Value::Bool(true)).collect()),
        _ => Err("the join rule gave no answer".to_string()),
    };
    // A failed crossing refuses its joins, and is logged where they were asked.
    let _ = cross(batch, send, answer, |e| Err(e.to_string())).await;
}

/// Most questions sent to JS in one crossing.
const MAX_BATCH: usize = 256;

/// A question and where its answer goes.
type Pending<Q, A> = (Q, oneshot::Sender<A>);

/// Questions for JS, batched: those queued together go together in one crossing. The only
/// place that groups calls into JS.
///
/// Crossings in flight at once are not limited: a slow authorize rule or handler (a database,
/// a remote call) never holds back the questions queued after it, and limiting authorize
/// crossings gained nothing (docs/design.md). Questions are: at most [`MAX_QUESTIONS`] wait or cross at
/// once, and the next waits for a free place (backpressure on the lane or socket that asks),
/// so a JS callback that stalls cannot make them pile up.
pub(crate) struct Batcher<Q, A> {
    tx: mpsc::UnboundedSender<Pending<Q, A>>,
    places: Arc<tokio::sync::Semaphore>,
}

/// Questions one batcher holds at once (waiting or in a crossing): 16 lanes with 256 authorize
/// questions in flight each fit four times over.
pub(crate) const MAX_QUESTIONS: usize = 16_384;

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// `run` sends one batch and answers each question.
    pub(crate) fn new<F, Fut>(run: F) -> (Batcher<Q, A>, impl std::future::Future<Output = ()> + Send)
    where
        F: Fn(Vec<Pending<Q, A>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending<Q, A>>();
        let task = async move {
            while let Some(first) = rx.recv().await {
                // The first question woke this task, on whichever thread was free, while its
                // sender (a lane preparing the events emitted together) may still be queueing
                // the others: one turn of the scheduler lets them in, so they cross together.
                tokio::task::yield_now().await;
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                tokio::spawn(run(batch));
            }
        };
        let places = Arc::new(tokio::sync::Semaphore::new(MAX_QUESTIONS));
        (Batcher { tx, places }, task)
    }

    /// Queues a question; the answer, or `None` when the server is closing. Queued at once when
    /// there is a free place (so the questions asked together cross together), else once one
    /// frees up.
    pub(crate) fn call(&self, q: Q) -> impl std::future::Future<Output = Option<A>> + Send {
        let (reply_tx, reply_rx) = oneshot::channel();
        let (tx, places) = (self.tx.clone(), self.places.clone());
        let mut place = places.clone().try_acquire_owned().ok();
        let mut later = Some((q, reply_tx));
        let mut sent = false;
        if place.is_some() {
            sent = later.take().is_some_and(|p| tx.send(p).is_ok());
        }
        async move {
            if let Some(p) = later {
                place = Some(places.acquire_owned().await.ok()?);
                tx.send(p).ok()?;
            } else if !sent {
                return None;
            }
            let answer = reply_rx.await.ok();
            drop(place);
            answer
        }
    }
}

/// Custom handlers through JS, batched.
pub(crate) struct JsHandlers {
    batcher: Batcher<HandlerCall, HandlerOutcome>,
}

impl JsHandlers {
    /// Creates the handler front and the batching task to spawn on the server's runtime.
    pub(crate) fn new(f: Arc<HandlerFn>) -> (JsHandlers, impl std::future::Future<Output = ()> + Send) {
        let (batcher, task) = Batcher::new(move |batch| run_batch(f.clone(), batch));
        (JsHandlers { batcher }, task)
    }
}

impl CustomHandlers for JsHandlers {
    fn call(&self, call: HandlerCall) -> BoxFuture<HandlerOutcome> {
        let outcome = self.batcher.call(call);
        Box::pin(async move { outcome.await.unwrap_or_else(|| failed("the server is closing")) })
    }
}

fn failed(message: &str) -> HandlerOutcome {
    HandlerOutcome::Failed {
        code: ErrorCode::Internal,
        message: message.into(),
    }
}

async fn run_batch(f: Arc<HandlerFn>, batch: Vec<Pending<HandlerCall, HandlerOutcome>>) {
    let encode = |c: HandlerCall| {
        let user = c.user.map(|u| (*u).clone()).unwrap_or(Value::Null);
        json!({ "type": c.kind, "socketId": c.socket_id, "user": user, "message": c.message })
    };
    let send = |calls: Vec<HandlerCall>| async move {
        let calls: Vec<Value> = calls.into_iter().map(encode).collect();
        f.call_async_catch(FnArgs::from((calls,))).await?.await
    };
    if let Err(e) = cross(batch, send, |_, r| outcome_of(r), |_| failed("handler failed")).await {
        warn!("custom handler batch failed: {e}");
    }
}

/// One crossing: `send` takes the batch's questions to JS in one call and returns the array of
/// answers; each question is answered from its slot of that array, or every one with `failed`
/// when the call throws or rejects (that error is returned too).
async fn cross<Q, A, Fut>(
    batch: Vec<Pending<Q, A>>,
    send: impl FnOnce(Vec<Q>) -> Fut,
    answer: impl Fn(usize, Option<&Value>) -> A,
    failed: impl Fn(&napi::Error) -> A,
) -> napi::Result<()>
where
    Fut: std::future::Future<Output = napi::Result<Vec<Value>>>,
{
    let (questions, replies): (Vec<Q>, Vec<oneshot::Sender<A>>) = batch.into_iter().unzip();
    match send(questions).await {
        Ok(answers) => {
            for (i, reply) in replies.into_iter().enumerate() {
                let _ = reply.send(answer(i, answers.get(i)));
            }
            Ok(())
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(failed(&e));
            }
            Err(e)
        }
    }
}

fn outcome_of(result: Option<&Value>) -> HandlerOutcome {
    let Some(result) = result else {
        return failed("handler gave no result");
    };
    if result.get("ok").and_then(Value::as_bool) == Some(true) {
        return match result.get("reply") {
            Some(v) => HandlerOutcome::Reply(v.clone()),
            None => HandlerOutcome::NoReply,
        };
    }
    let code = result
        .get("code")
        .and_then(Value::as_str)
        .and_then(ErrorCode::parse)
        .unwrap_or(ErrorCode::Internal);
    let message = result
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("handler failed")
        .to_string();
    HandlerOutcome::Failed { code, message }
}
