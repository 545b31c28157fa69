//! carrack-runtime: builds a container from an OCI bundle.
