//! trunkline-media (work in progress).
