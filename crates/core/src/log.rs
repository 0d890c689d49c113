//! Minimal leveled logging to stderr. No document data is ever logged: callers log ids, codes
//! and counts only. The level comes from `PAYLOAD_REALTIME_LOG` (error, warn, info, debug;
//! default warn).

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

pub fn enabled(level: Level) -> bool {
    static MAX: OnceLock<Level> = OnceLock::new();
    let max = *MAX.get_or_init(|| match std::env::var("PAYLOAD_REALTIME_LOG").as_deref() {
        Ok("error") => Level::Error,
        Ok("info") => Level::Info,
        Ok("debug") => Level::Debug,
        Ok("off") | Ok("none") => Level::Error,
        _ => Level::Warn,
    });
    level <= max
}

#[macro_export]
macro_rules! log_at {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            eprintln!("[payload-realtime] {:?}: {}", $level, format_args!($($arg)*));
        }
    };
}

#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Warn, $($arg)*) }; }
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Info, $($arg)*) }; }
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Debug, $($arg)*) }; }
