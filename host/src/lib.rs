//! Host side of DeepTIRP Edge: the library behind the `tirp` CLI.
