//! carrack-shim: the per-container shim.
