//! trunkline-emulators (work in progress).
