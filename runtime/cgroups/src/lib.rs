//! cgroups v1, v2 and hybrid for Carrack.
