//! Nothing to link: this package holds `layering.rs`, the test that keeps the workspace's
//! crates and modules layered (see docs/design.md, "Layers").
