//! The second load generator: the same clients built on a real client library, `tokio-tungstenite`
//! 0.24, used as an application uses it: one tokio current_thread runtime, a task per socket,
//! `connect_async("ws://host:port/?token=...")`, `send` of the join, then `next()` message by
//! message. It reads as tungstenite does (4 KB per read, frame by frame), not as the bench's own
//! generator does (one 256 KB read per socket per burst): how the server's write pattern suits a
//! common client is measured here.
//!
//! It speaks the same stdin/stdout lines as `loadgen` (`measure <expected> <timeout_ms>`,
//! `stats`, `quit`; `{"event":"ready"|"armed"|"result"|"stats",...}`), so `benches/run.mjs`
//! drives either. Latency is emit-to-receive as `loadgen` measures it, the receive time taken
//! when the library hands the message over.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use payload_realtime_loadgen::{
    command_loop, connect_all, micros_since, now_us, percentile, run_local, Args, Counters, Round, Setup,
};
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::{Error, Message};

struct Shared {
    c: Counters,
    /// When each message arrived, µs after the measurement was armed.
    recv: RefCell<Vec<u32>>,
    /// `ws://host:port/path` (the token is appended per socket).
    url: String,
}

impl Shared {
    fn record(&self, idx: usize, payload: &[u8]) {
        let now = now_us();
        self.c.record(idx, payload, now, |_| {
            self.recv.borrow_mut().push(micros_since(self.c.armed_us.get(), now));
        });
    }
}

impl Round for Shared {
    fn reset(&self) {
        self.recv.borrow_mut().clear();
    }

    fn report(&self, armed_us: u64, out: &mut Map<String, Value>) {
        // Arrival order is already sorted.
        let recv = std::mem::take(&mut *self.recv.borrow_mut());
        let recv_at = |p: f64| {
            if recv.is_empty() {
                0
            } else {
                armed_us + percentile(&recv, p)
            }
        };
        out.insert("recv_p50_us".into(), json!(recv_at(0.50)));
        out.insert("recv_p99_us".into(), json!(recv_at(0.99)));
        // What only `loadgen` measures (kernel timestamps, the exactly-once check).
        for k in ["arrival_samples", "duplicates", "out_of_order", "id_out_of_range"] {
            out.insert(k.into(), json!(0));
        }
    }
}

/// One client: connect (retried on connection errors, not on a refusal), join and wait for the
/// ack (holding a connect permit until then), then take messages until the connection ends.
async fn conn_task(idx: usize, shared: Rc<Shared>, token: Rc<String>, room: Option<String>, sem: Rc<Semaphore>) {
    let c = &shared.c;
    let mut permit = Some(sem.acquire().await.expect("semaphore"));
    let sep = if shared.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}token={token}", shared.url);
    let mut ws = None;
    for attempt in 0..5u64 {
        if attempt > 0 {
            c.retries.set(c.retries.get() + 1);
            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
        }
        match tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url.as_str())).await {
            Ok(Ok((stream, _))) => {
                ws = Some(stream);
                break;
            }
            // Refused by the server (a token problem is not retried).
            Ok(Err(Error::Http(_))) => break,
            _ => {}
        }
    }
    let Some(mut ws) = ws else {
        c.failed.set(c.failed.get() + 1);
        c.settle();
        return;
    };
    c.handshake();
    let mut awaiting_ack = false;
    match room {
        Some(room) => {
            let join = format!(r#"{{"type":"join-collection","collection":"{room}","id":1}}"#);
            if ws.send(Message::Text(join)).await.is_err() {
                c.failed.set(c.failed.get() + 1);
                c.settle();
                return;
            }
            awaiting_ack = true;
        }
        None => {
            permit.take();
            c.settle();
        }
    }
    while let Some(msg) = ws.next().await {
        let payload = match &msg {
            Ok(Message::Text(t)) => t.as_bytes(),
            Ok(Message::Binary(b)) => b.as_slice(),
            // Pings are answered by the library; a close ends the loop after it.
            Ok(_) => continue,
            Err(_) => break,
        };
        if awaiting_ack {
            awaiting_ack = false;
            if memchr::memmem::find(payload, b"\"ack\"").is_some() {
                c.joined.set(c.joined.get() + 1);
            } else {
                c.join_errors.set(c.join_errors.get() + 1);
            }
            permit.take();
            c.settle();
        } else {
            shared.record(idx, payload);
        }
    }
    c.closed.set(c.closed.get() + 1);
    if awaiting_ack {
        c.failed.set(c.failed.get() + 1);
        c.settle();
    }
}

async fn run(args: Args) {
    let setup = Setup::from_args(&args);
    let shared = Rc::new(Shared {
        c: Counters::new(setup.conns),
        recv: RefCell::new(Vec::new()),
        url: format!("ws://{}:{}{}", setup.host, setup.port, setup.path),
    });
    let mut ready = connect_all(&setup, &shared.c, |i, token, room, sem| {
        tokio::task::spawn_local(conn_task(i, shared.clone(), token, room, sem));
    })
    .await;
    ready.insert("client".into(), json!("tokio-tungstenite 0.24"));
    println!("{}", Value::Object(ready));
    command_loop("tungstenite", &shared.c, &*shared).await;
}

fn main() {
    run_local(run);
}
