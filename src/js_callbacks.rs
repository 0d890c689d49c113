//! Where the core calls into JS: the authorize and custom-handler traits implemented with
//! thread-safe functions. This is the only file that crosses from the server's threads into
//! the JS thread.
//!
//! Both crossings are batched: authorize asks once per event for every distinct user, and
//! custom handler calls that arrive together travel in one call. The functions are weak (they
//! never keep Node alive) and JS throws or rejections come back as `Err`, never as a fatal
//! exception (`call_async_catch`, not `call_async`).

use std::sync::Arc;

use napi::bindgen_prelude::{FnArgs, Promise};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::Status;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use payload_realtime_core::callbacks::{
    AuthorizeRequest, Authorizer, BoxFuture, CustomHandlers, Decision, HandlerCall, HandlerOutcome, UserVerifier,
};
use payload_realtime_core::protocol::ErrorCode;
use payload_realtime_core::warn;

/// `(collection, event, users) => Promise<Array<boolean | { doc }>>`, one answer per user.
pub type AuthorizeFn = ThreadsafeFunction<
    FnArgs<(String, Value, Vec<Value>)>,
    Promise<Vec<Value>>,
    FnArgs<(String, Value, Vec<Value>)>,
    Status,
    false,
    true,
>;

/// `(calls) => Promise<results>`: `calls` is `[{ type, socketId, user, message }]`, each result
/// `{ ok: true, reply?: any } | { ok: false, code?: string, message: string }`.
pub type HandlerFn =
    ThreadsafeFunction<FnArgs<(Vec<Value>,)>, Promise<Vec<Value>>, FnArgs<(Vec<Value>,)>, Status, false, true>;

pub struct JsAuthorizer {
    pub f: Arc<AuthorizeFn>,
}

impl Authorizer for JsAuthorizer {
    fn authorize(&self, req: AuthorizeRequest) -> BoxFuture<Result<Vec<Decision>, String>> {
        let f = self.f.clone();
        Box::pin(async move {
            let users: Vec<Value> = req.users.iter().map(|u| (**u).clone()).collect();
            let promise = f
                .call_async_catch(FnArgs::from((req.collection, (*req.event).clone(), users)))
                .await
                .map_err(|e| e.to_string())?;
            let answers = promise.await.map_err(|e| e.to_string())?;
            Ok(answers.iter().map(Decision::from_value).collect())
        })
    }
}

/// `(token, claims) => Promise<user | null>`: Payload's own check of the user and session.
pub type VerifyFn =
    ThreadsafeFunction<FnArgs<(String, Value)>, Promise<Value>, FnArgs<(String, Value)>, Status, false, true>;

pub struct JsVerifier {
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

/// Most handler calls sent to JS in one crossing.
const MAX_BATCH: usize = 256;

type Pending = (HandlerCall, oneshot::Sender<HandlerOutcome>);

/// Custom handlers through JS, batched: calls that queue up while a crossing is under way go
/// together in the next one.
pub struct JsHandlers {
    tx: mpsc::UnboundedSender<Pending>,
}

impl JsHandlers {
    /// Creates the handler front and the batching task to spawn on the server's runtime.
    pub fn new(f: Arc<HandlerFn>) -> (JsHandlers, impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::unbounded_channel();
        (JsHandlers { tx }, batcher(f, rx))
    }
}

impl CustomHandlers for JsHandlers {
    fn call(&self, call: HandlerCall) -> BoxFuture<HandlerOutcome> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let sent = self.tx.send((call, reply_tx)).is_ok();
        Box::pin(async move {
            if !sent {
                return failed("the server is closing");
            }
            reply_rx.await.unwrap_or_else(|_| failed("the handler was dropped"))
        })
    }
}

fn failed(message: &str) -> HandlerOutcome {
    HandlerOutcome::Failed {
        code: ErrorCode::Internal,
        message: message.into(),
    }
}

async fn batcher(f: Arc<HandlerFn>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        tokio::spawn(run_batch(f.clone(), batch));
    }
}

async fn run_batch(f: Arc<HandlerFn>, batch: Vec<Pending>) {
    let (calls, replies): (Vec<Value>, Vec<oneshot::Sender<HandlerOutcome>>) = batch
        .into_iter()
        .map(|(c, r)| {
            let user = c.user.map(|u| (*u).clone()).unwrap_or(Value::Null);
            (
                json!({ "type": c.kind, "socketId": c.socket_id, "user": user, "message": c.message }),
                r,
            )
        })
        .unzip();
    let results = async {
        let promise = f.call_async_catch(FnArgs::from((calls,))).await?;
        promise.await
    }
    .await;
    match results {
        Ok(results) => {
            for (i, reply) in replies.into_iter().enumerate() {
                let _ = reply.send(outcome_of(results.get(i)));
            }
        }
        Err(e) => {
            warn!("custom handler batch failed: {e}");
            for reply in replies {
                let _ = reply.send(failed("handler failed"));
            }
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
