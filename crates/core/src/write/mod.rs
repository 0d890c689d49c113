//! A socket and the bytes on their way to it: the outbound queue, the flushers, splice.

pub(crate) mod flush;
pub(crate) mod outbound;
pub(crate) mod socket;
pub(crate) mod splice;
