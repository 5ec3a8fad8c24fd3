//! xenpoold: the toolstack daemon of one host.
fn main() {}
