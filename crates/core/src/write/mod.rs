//! A socket and the bytes on their way to it: the outbound queue, the flushers, splice.

pub mod flush;
pub mod outbound;
pub mod peer;
pub mod splice;
