//! The provisioning link between `tirp` (host) and `tirpd` (device): one definition of the
//! framing, the messages and the transfer engine for both ends.

pub mod client;
#[cfg(unix)]
pub mod fault;
pub mod frame;
pub mod proto;
pub mod transfer;
