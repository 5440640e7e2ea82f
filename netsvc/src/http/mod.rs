//! HTTP boot server.
