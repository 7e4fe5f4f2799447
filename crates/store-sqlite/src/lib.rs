//! store-sqlite (being written).
