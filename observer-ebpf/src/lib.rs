//! Empty library target: it gives `observer`'s build script a dependency edge on this crate,
//! so cargo rebuilds the eBPF object when it changes. The programs are in the `observer` bin.
#![no_std]
