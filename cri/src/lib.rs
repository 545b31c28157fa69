//! carrackd: the CRI daemon.
