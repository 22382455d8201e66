//! pkd: the PK engine.

pub mod tokens;
