//! aerie-client: multi-field generation programs over any
//! OpenAI-compatible API, with API speculative execution.
//!
//! A [`Program`] is a conversation whose last assistant turn mixes literal
//! text with named [`gen`] fields. [`Client::run`] fills the fields either
//! with one call per field ([`Mode::Normal`]) or with one call for the whole
//! turn, falling back to per-field calls from the first point where the
//! reply does not match the program ([`Mode::Speculative`]). See
//! `docs/client.md` for the matching rules and an example.

pub mod api;
pub mod demo;
pub mod error;
pub mod executor;
pub mod matcher;
pub mod program;

pub use api::{openai_base_url, Api, ClientConfig, PromptFormat};
pub use error::{ClientError, ProgramError};
pub use executor::{Client, Field, Mode, ProgramResult, Source};
pub use program::{gen, Gen, Program, ProgramBuilder, Role, Sampling, Term};
