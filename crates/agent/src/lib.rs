//! trunkline-agent (work in progress).
