//! Carrack's image store: registry pulls, content store, layer unpacking, overlay snapshots.
