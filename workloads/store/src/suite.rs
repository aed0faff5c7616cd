//! Behavioural suite (being written).
