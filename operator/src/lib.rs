//! The caas control plane as a library: the custom resource types (`crd`), the pure builders
//! that turn a `ChatPlatform` into the Kubernetes objects it needs (`build`), and the
//! reconcilers that apply them (`controller`). The binary (`main.rs`) only parses flags and
//! wires these together.
#![forbid(unsafe_code)]
// Tests may unwrap: a panic is how a test fails.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod admin_api;
pub mod build;
pub mod controller;
pub mod crd;
pub mod fake_api;
pub mod http;
pub mod leader;
#[cfg(test)]
mod mock_api;
