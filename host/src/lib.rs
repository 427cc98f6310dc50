//! Host side of DeepTIRP Edge: the library behind the `tirp` CLI.

pub mod audit;
pub mod difficulty;
pub mod modelcard;
pub mod provision;
pub mod stats;
