//! Pod networking for Carrack: CNI plugins and the built-in bridge network.
