//! Synthetic multi-centre radiograph cohort (work in progress in this session).
