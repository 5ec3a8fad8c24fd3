//! Cross-crate and multi-process tests live under `tests/`.
