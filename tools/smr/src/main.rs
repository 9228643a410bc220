//! The `smr` command.

fn main() {}
