//! MongoDB adapter (being written).
