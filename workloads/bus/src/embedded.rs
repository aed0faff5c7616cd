//! Embedded log (being written).
