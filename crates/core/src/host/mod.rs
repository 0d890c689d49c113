//! What the core asks of its host (the Node addon): the callback traits and the authorize
//! questions' wire format.

pub mod callbacks;
pub mod crossing;
