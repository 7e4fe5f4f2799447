//! store-postgres (being written).
