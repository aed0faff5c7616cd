//! SQLite adapter (being written).
