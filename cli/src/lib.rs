//! proxy-webhooks on the command line (`proxy-webhooks`): a plugin configuration generated from
//! an API's OpenAPI document (`rules`), and a configuration checked with the plugin's own parser
//! (`check`). Native only: its dependencies (a YAML parser) never reach the plugin's .wasm.
//!
//! `document` reads JSON and YAML; `openapi` walks an OpenAPI document; `schema` turns its
//! schemas into self-contained JSON Schema 2020-12; `naming` makes event types and path
//! templates; `rules` puts them together; `pretty` lays JSON out for people; `check` validates
//! configurations and Envoy files.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod check;
pub mod document;
pub mod naming;
pub mod openapi;
pub mod pretty;
pub mod rules;
pub mod schema;
