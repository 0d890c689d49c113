//! An echo server built from the same connection code as the real server, for the
//! Autobahn|Testsuite fuzzing client (`scripts/autobahn.sh`).
//!
//! Usage: `autobahn-echo [HOST:PORT]` (default 127.0.0.1:9001). Prints `listening on ADDR` once
//! it accepts connections.

use payload_realtime_core::config::Config;
use payload_realtime_core::host::callbacks::Callbacks;
use payload_realtime_core::net::server::Server;

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let (host, port) = addr.rsplit_once(':').expect("address as HOST:PORT");
    let config = Config {
        host: host.into(),
        port: port.parse().expect("a port number"),
        allow_anonymous: true,
        echo_mode: true,
        // Autobahn's limits cases send messages of up to 16 MiB.
        max_payload_length: 64 << 20,
        max_backpressure: 256 << 20,
        max_messages_per_second: 0,
        idle_timeout: None,
        ..Config::default()
    };
    let server = match Server::start(config, Callbacks::default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    println!("listening on {}", server.local_addr());
    loop {
        std::thread::park();
    }
}
