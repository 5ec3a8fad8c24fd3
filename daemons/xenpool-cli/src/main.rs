//! xenpool: an xe-style command line client.
fn main() {}
