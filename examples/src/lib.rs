//! Example programs live under `examples/`.
