//! Test support for the end-to-end tests: start registries, daemons, build images.
