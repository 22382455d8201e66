//! pkd: the PK engine.
