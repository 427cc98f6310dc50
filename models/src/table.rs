//! Label tables (work in progress in this session).
